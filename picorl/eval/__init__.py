"""Evaluation on fixed, seeded task sets with greedy decoding."""
