"""Rollouts: environments run over an engine into episodes, k episodes of one task to a group."""

from picorl.rollout.episodes import Episode, render_prompt, run_episodes

__all__ = ["Episode", "render_prompt", "run_episodes"]
