"""Training: the policy (LoRA or full), log-probs, the RL loop, the SFT warm-up, checkpoints."""
