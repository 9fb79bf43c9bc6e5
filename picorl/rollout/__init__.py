"""Rollouts: engines that sample completions, and episodes that run environments over them."""

from picorl.rollout.types import Completion, RolloutEngine, SamplingParams

__all__ = ["Completion", "RolloutEngine", "SamplingParams"]
