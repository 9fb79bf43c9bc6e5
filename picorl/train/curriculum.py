"""The RL tier curriculum: train on one tier at a time and move on once it is learned.

Tiers are taken in the order given. After each update the trainer records (tier, exact-match
fraction); the run moves to the next tier once the last ``window`` updates AT THE CURRENT TIER average
at least ``threshold``. The rule is a pure function of that history, so a resumed run recomputes its
tier from ``metrics.jsonl`` (the ``curriculum/tier`` and ``reward/exact_fraction`` of its train rows).
"""

from __future__ import annotations


def curriculum_tier(
    history: list[tuple[int, float]], tiers: list[int], threshold: float | None, window: int
) -> int:
    """The tier the next update trains on, given ``history`` = [(tier, exact fraction)] per update."""
    if not tiers:
        raise ValueError("the curriculum needs at least one tier")
    if threshold is None:
        raise ValueError("curriculum_tier needs a threshold (the curriculum is off without one)")
    level = 0
    streak: list[float] = []
    for tier, success in history:
        if tier != tiers[level]:  # a row from before a promotion that the history already passed
            continue
        streak.append(success)
        if level + 1 < len(tiers) and len(streak) >= window and sum(streak[-window:]) / window >= threshold:
            level += 1
            streak = []
    return tiers[level]
