"""Greedy evaluation on fixed, seeded eval sets, one per tier.

The eval set of a tier is the same for every run with the same ``eval_seed`` (and independent of the
training seed), so runs and checkpoints compare on identical tasks. Accuracy counts exact matches only
(``info["correct"]``), never ``reward > 0`` (footgun 5), and comes with a 95% Wilson interval: with
200 tasks the interval is at most about +-7 points, against the seed's +-17 for its 32 fresh tasks.

Under torchrun each rank plays a contiguous slice of every tier's tasks and rank 0 gathers the
episodes in task order, so its metrics and episodes are those of one process (the other ranks get
empty ones: only rank 0 logs).
"""

from __future__ import annotations

from collections.abc import Callable

from picorl import distributed
from picorl.engine.types import RolloutEngine, SamplingParams
from picorl.envs.base import Env
from picorl.logging.stats import wilson_interval
from picorl.rollout.episodes import Episode, run_episodes
from picorl.runtime import eval_task_seeds


def evaluate(
    engine: RolloutEngine,
    tokenizer,
    make_env: Callable[[int], Env],
    *,
    tiers: list[int],
    num_tasks: int,
    eval_seed: int,
    max_tokens: int,
) -> tuple[dict[str, float], list[Episode]]:
    """Greedy episodes on every tier's eval set (``make_env(tier)`` builds an env of that tier);
    returns ``eval/tier{N}/...`` metrics and the episodes (on rank 0; empty on the other ranks)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    metrics: dict[str, float] = {}
    all_episodes: list[Episode] = []
    for tier in tiers:
        episodes = run_episodes(
            lambda tier=tier: make_env(tier),
            distributed.shard(eval_task_seeds(tier, num_tasks, eval_seed)),
            engine,
            tokenizer,
            params,
            k=1,
        )
        parts = distributed.gather_to_main(episodes)  # [episodes] in one process
        if parts is None:
            continue
        episodes = [e for part in parts for e in part]
        metrics.update(tier_metrics(tier, episodes))
        all_episodes += episodes
    return metrics, all_episodes


def tier_metrics(tier: int, episodes: list[Episode]) -> dict[str, float]:
    n = len(episodes)
    correct = sum(bool(e.info.get("correct")) for e in episodes)
    low, high = wilson_interval(correct, n)
    prefix = f"eval/tier{tier}"
    return {
        f"{prefix}/accuracy": correct / n,
        f"{prefix}/accuracy_low": low,
        f"{prefix}/accuracy_high": high,
        f"{prefix}/format_compliance": sum(bool(e.info.get("format_ok")) for e in episodes) / n,
        f"{prefix}/reward_mean": sum(e.reward for e in episodes) / n,
        f"{prefix}/truncated_fraction": sum(e.truncated for e in episodes) / n,
        f"{prefix}/completion_tokens": sum(e.num_generated for e in episodes) / n,
        f"{prefix}/n": float(n),
    }
