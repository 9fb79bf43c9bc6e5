"""One policy update: rollout -> rewards -> advantages -> loss on micro-batches -> clip -> step.

Read top to bottom, this is the whole RL algorithm; the formulas live in :mod:`picorl.algos`.

Under torchrun (:mod:`picorl.distributed`) ``num_tasks`` is the GLOBAL number of groups: rank r rolls
out the r-th contiguous slice of the update's task seeds (whole groups), the advantages, loss masks and
rollout metrics are computed on every rank's rewards gathered together, the loss normalisers count the
global batch, and the gradients are summed over ranks before clipping, so the update is the one a
single process makes on the same episodes. In one process every gather returns its input.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from picorl import distributed
from picorl.algos import advantages as adv
from picorl.algos import credit, losses, value_head
from picorl.config import Config
from picorl.engine.types import RolloutEngine, SamplingParams
from picorl.envs.base import Env
from picorl.rollout.episodes import Episode, run_episodes
from picorl.runtime import train_task_seeds
from picorl.train.batch import MicroBatch, make_micro_batches
from picorl.train.guard import FiniteStepGuard
from picorl.train.logprobs import chosen_token_logprobs
from picorl.train.policy import weights_swapped
from picorl.train.step_options import (
    CompiledLayers,
    TokenBudget,
    autocast,
    micro_batch_tokens,
    train_phase,
)
from picorl.units import GIB


@dataclass
class UpdateContext:
    """What an update needs besides its number: the run's settings (``config``; k, the batch sizes,
    the algorithm, the seed are read there) and what the trainer builds from them once."""

    config: Config
    model: torch.nn.Module
    tokenizer: object
    engine: RolloutEngine
    make_env: Callable[[], Env]  # fresh training environments (``runtime.env_factory``)
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    value_head: torch.nn.Module | None = None
    token_budget: TokenBudget = field(default_factory=TokenBudget)  # micro_batch_tokens = 0
    compiled_layers: CompiledLayers = field(default_factory=CompiledLayers)  # compile_train
    # kl_reference = "start": the trained weights as RL found them (the trainer copies them at RL's start)
    reference_weights: dict[str, torch.Tensor] | None = None
    # optimizer steps on a non-finite gradient norm are skipped; a run of them stops RL (picorl.train.guard)
    step_guard: FiniteStepGuard = field(default_factory=lambda: FiniteStepGuard("RL", "Lower --lr"))


def collect(
    ctx: UpdateContext, update: int, rank: int | None = None, world_size: int | None = None
) -> tuple[list[Episode], dict[str, float]]:
    """Sample this rank's share of ``num_tasks`` groups of k episodes (all of them in one process).
    With ``zero_variance="dynamic"`` (DAPO) keep drawing groups, at most ``dynamic_max_draws`` rounds,
    until the share has reward variance.

    ``num_tasks`` is global: of each round's ``num_tasks`` task seeds (those a single process draws)
    rank r takes the r-th contiguous slice of ``num_tasks / world_size``, so a group never spans ranks,
    no task is drawn twice, and episodes keep the group numbers a single process gives them. The
    engine call of a rank is seeded by its slice's first task seed. ``rank`` and ``world_size`` default
    to this process's (a test passes them to roll out every rank's share in one process)."""
    algo, rollout = ctx.config.algo, ctx.config.rollout
    rank = distributed.rank() if rank is None else rank
    world_size = distributed.world_size() if world_size is None else world_size
    num_tasks = rollout.num_tasks
    share = num_tasks // world_size  # the trainer checks that num_tasks divides evenly
    episodes: list[Episode] = []
    drawn, rounds = 0, 0
    while True:
        first = drawn + rank * share
        seeds = train_task_seeds(ctx.config.train.seed, update, first, share)
        params = SamplingParams(
            max_tokens=rollout.max_tokens, temperature=rollout.temperature, top_p=rollout.top_p,
            top_k=rollout.top_k, seed=seeds[0],
        )  # fmt: skip
        new = run_episodes(ctx.make_env, seeds, ctx.engine, ctx.tokenizer, params, k=rollout.k)
        for e in new:
            e.group += first
        episodes += new
        drawn += num_tasks
        rounds += 1
        if algo.zero_variance != "dynamic" or rounds >= algo.dynamic_max_draws:
            break
        informative = _informative_groups(episodes)
        if len(informative) >= share:  # each rank fills its own share (no rank waits for another)
            break
    if algo.zero_variance == "dynamic":
        keep = set(sorted(_informative_groups(episodes))[:share])
        if len(keep) < share:  # bounded: fill with uninformative groups rather than loop forever
            keep |= set(sorted({e.group for e in episodes} - keep)[: share - len(keep)])
        episodes = [e for e in episodes if e.group in keep]
    return episodes, {"groups/drawn": float(rounds * share)}


def _facts(episode: Episode) -> Episode:
    """An episode without its tokens and texts: what advantages and rollout metrics read of another
    rank's episodes (so the all-gather carries kilobytes, not the whole rollout)."""
    return dataclasses.replace(
        episode, prompt_ids=[], completion_ids=[], engine_logprobs=[], messages=[],
        action_mask=[True] * episode.num_generated,
    )  # fmt: skip


def _informative_groups(episodes: list[Episode]) -> set[int]:
    """Groups whose rewards are not all equal (the only ones that carry a gradient)."""
    rewards = torch.tensor([e.reward for e in episodes])
    groups = torch.tensor([e.group for e in episodes])
    return set(groups[~adv.zero_variance_mask(rewards, groups)].tolist())


def rl_update(ctx: UpdateContext, update: int) -> tuple[dict[str, float], list[Episode]]:
    """Run update number ``update`` (0-based); returns its metrics and episodes."""
    distributed.barrier()  # rank 0 may still be saving or plotting: time the update, not that wait
    t0 = time.perf_counter()
    on_gpu = ctx.device.type == "cuda"
    if on_gpu:  # peaks are the update's own, not those of the evaluation or SFT before it
        torch.cuda.reset_peak_memory_stats(ctx.device)
    # the rollout's fixed costs, timed on the host: mapping the KV cache back (CUDA virtual memory
    # maps all of it) and releasing it; the rest of the rollout is generate, the env and the rewards
    t_wake = time.perf_counter()
    ctx.engine.wake_up()
    t_wake = time.perf_counter() - t_wake
    episodes, metrics = collect(ctx, update)
    t_sleep = time.perf_counter()
    ctx.engine.sleep()
    metrics["time/engine_wake_s"] = t_wake
    metrics["time/engine_sleep_s"] = time.perf_counter() - t_sleep
    if on_gpu:  # from here on the peak is training's own: the KV cache is released while it runs
        metrics["memory/rollout_peak_gb"] = torch.cuda.max_memory_allocated(ctx.device) / GIB
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t_rollout = time.perf_counter() - t0
    learned, t_train = learn(ctx, episodes)
    metrics.update(learned)
    metrics.update(
        {
            "lr": ctx.lr_scheduler.get_last_lr()[0],
            "time/rollout_s": t_rollout,
            "time/train_s": t_train,
            "time/update_s": time.perf_counter() - t0,
            "engine/tokens_per_s": float(ctx.engine.last_stats.get("tokens_per_s", 0.0))
            or sum(e.num_generated for e in episodes) / max(t_rollout, 1e-9),
        }
    )
    if on_gpu:  # the training peak stays readable after the update (the trainer sizes the KV cache by it)
        metrics["memory/peak_gb"] = torch.cuda.max_memory_allocated(ctx.device) / GIB
        metrics["memory/kv_cache_gb"] = ctx.engine.kv_cache_bytes / GIB
    if distributed.active():  # the rest are global already (computed on gathered episodes or reduced)
        local = {k: metrics[k] for k in PER_RANK_METRICS if k in metrics}
        metrics.update(distributed.reduce_metrics(local, 1.0, PER_RANK_RULES))
    return metrics, episodes


def learn(ctx: UpdateContext, episodes: list[Episode]) -> tuple[dict[str, float], float]:
    """Rewards -> advantages -> the optimizer steps on this rank's ``episodes``; returns the rollout and
    training metrics (of every rank's episodes) and the seconds spent training."""
    # Every rank's episodes (their facts, not their tokens): advantages and loss masks may use batch
    # statistics (REINFORCE's batch mean, scale_rewards="batch"), which must be the global batch's.
    everyone = distributed.all_gather_objects([_facts(e) for e in episodes]) if distributed.active() else [episodes]
    offset = sum(len(part) for part in everyone[: distributed.rank()])
    global_episodes = [e for part in everyone for e in part]
    rewards = torch.tensor([e.reward for e in global_episodes], dtype=torch.float32)
    group_ids = torch.tensor([e.group for e in global_episodes])
    lengths = torch.tensor([e.num_generated for e in global_episodes])
    truncated = torch.tensor([e.truncated for e in global_episodes])
    algo, max_tokens = ctx.config.algo, ctx.config.rollout.max_tokens
    shaped = adv.apply_overlong(rewards, lengths, truncated, max_tokens, algo)
    advantages = adv.compute_advantages(shaped, group_ids, algo)
    include = adv.loss_mask_for_sequences(shaped, group_ids, truncated, algo)
    mine = slice(offset, offset + len(episodes))
    if algo.algo != "ppo":  # PPO's advantages are per token (GAE), not one per sequence
        for episode, advantage in zip(episodes, advantages[mine].tolist()):
            episode.advantage = advantage  # for samples.jsonl and the report's group browser

    t1 = time.perf_counter()
    train = ctx.config.train
    loss_masks, credit_metrics = credited_masks(episodes, shaped[mine], advantages[mine], algo.credit)
    batches = make_micro_batches(
        episodes, advantages[mine], train.micro_batch_size, ctx.tokenizer.pad_token_id, ctx.device,
        include[mine].tolist(), max_tokens=micro_batch_tokens(train, ctx.token_budget, ctx.device),
        loss_masks=loss_masks,
    )  # fmt: skip
    # Every rank optimizes if any rank has a batch: each takes part in every gradient all-reduce.
    anything = distributed.any_rank(bool(batches))  # called on every rank (never short-circuited)
    with train_phase(ctx.model, train, ctx.compiled_layers):
        train_metrics = optimize(ctx, batches, max_completion_length=max_tokens) if anything else {}
    if batches and train.micro_batch_tokens == 0:  # learn the bytes a padded token costs
        ctx.token_budget.end(ctx.device, max(mb.input_ids.numel() for mb in batches))
    t_train = time.perf_counter() - t1
    metrics = rollout_metrics(global_episodes, rewards, group_ids, advantages, include)
    metrics.update(train_metrics)
    metrics.update(credit_metrics)
    metrics["train/micro_batches"] = float(len(batches))
    return metrics, t_train


def credited_masks(
    episodes: list[Episode], rewards: torch.Tensor, advantages: torch.Tensor, mode: str
) -> tuple[list[list[bool]] | None, dict[str, float]]:
    """The tokens each episode's advantage trains (``credit``; None = every sampled token) and, for
    ``divergence``, where the blamed completions left their better siblings: ``credit/divergence_at``,
    the mean position of that token as a fraction of the completion. Groups never span ranks, so this
    rank's episodes hold every sibling it compares with."""
    if mode == "sequence":
        return None, {}
    points = credit.divergence_points(
        [e.completion_ids for e in episodes], rewards.tolist(), advantages.tolist(), [e.group for e in episodes]
    )
    masks = [credit.credited_tokens(e.action_mask, d) for e, d in zip(episodes, points)]
    at = [d / max(len(e.completion_ids), 1) for e, d in zip(episodes, points) if d is not None]
    return masks, {"credit/divergence_at": sum(at) / len(at)} if at else {}


# Metrics each rank measures for itself, and how they combine: the slowest rank sets the update's pace
# (times, memory: max); ranks sample at once, so their rollout throughputs add up; draws add up.
PER_RANK_RULES = {
    "time/": distributed.MAX,
    "memory/": distributed.MAX,
    "engine/tokens_per_s": distributed.SUM,
    "groups/drawn": distributed.SUM,
    "train/micro_batches": distributed.MAX,
    "credit/divergence_at": distributed.MEAN,
}
PER_RANK_METRICS = (
    "groups/drawn", "time/rollout_s", "time/train_s", "time/update_s", "engine/tokens_per_s",
    "memory/rollout_peak_gb", "memory/peak_gb", "memory/kv_cache_gb", "train/micro_batches",
    "credit/divergence_at",
)  # fmt: skip


def _forward(ctx: UpdateContext, mb: MicroBatch, with_values: bool):
    train = ctx.config.train
    out = chosen_token_logprobs(
        ctx.model,
        mb.input_ids,
        None,  # right-padded rows: causal attention is exact and faster (chosen_token_logprobs)
        mb.action_mask,
        ctx.config.rollout.temperature,
        return_hidden=with_values,
        autocast=autocast(train.train_autocast, ctx.device),
    )
    if not with_values:
        return out, None
    logprobs, hidden = out
    return logprobs, ctx.value_head(hidden)


def optimize(ctx: UpdateContext, batches: list[MicroBatch], max_completion_length: int) -> dict[str, float]:
    """Loss on micro-batches, gradient accumulation, clipping and optimizer steps: ``num_iterations``
    epochs over the rollout batch (``ppo_minibatches`` optimizer steps per epoch), against the
    log-probs (and, for PPO, values) stored before the first step."""
    algo = ctx.config.algo
    ppo = algo.algo == "ppo"
    totals = {  # the normalisers: counts of the GLOBAL batch (every rank's micro-batches)
        "total_sequences": sum(len(mb.index) for mb in batches),
        "total_tokens": sum(mb.num_tokens for mb in batches),
    }
    if distributed.active():
        totals = {key: int(distributed.all_reduce_sum(value)) for key, value in totals.items()}
    with torch.no_grad():
        # Old log-probs are needed once the policy moves within an update; with one step they are
        # the current log-probs, detached, so the ratio is exactly 1 and no extra forward is spent.
        stored = [_forward(ctx, mb, ppo) for mb in batches] if algo.num_iterations > 1 or ppo else None
        refs = reference_logprobs(ctx, batches) if algo.beta > 0 else [None] * len(batches)
        targets = [_gae(ctx, mb, values) for mb, (_, values) in zip(batches, stored)] if ppo else None

    metric_sums: dict[str, float] = {}
    diffs = []
    steps = 0
    grad_norm = 0.0
    ctx.model.train()
    parts = algo.ppo_minibatches if ppo else 1
    if distributed.active():  # every rank must take the same number of optimizer steps
        parts = max(1, min(parts, int(distributed.all_reduce_min(len(batches)))))
    for epoch in range(algo.num_iterations):
        minibatches = _split(list(range(len(batches))), parts)
        for minibatch in minibatches:
            # normalisers count the whole batch; a minibatch is a share of it
            share = len(batches) / len(minibatch) if minibatch else 0.0
            for i in minibatch:
                mb = batches[i]
                logprobs, values = _forward(ctx, mb, ppo)
                old = stored[i][0] if stored is not None else logprobs.detach()
                if epoch == 0:
                    diffs.append((logprobs.detach() - mb.engine_logprobs)[mb.action_mask].abs())
                loss, m = losses.policy_loss(
                    logprobs, old, targets[i][0] if ppo else mb.advantages, mb.action_mask, algo,
                    engine_logprobs=mb.engine_logprobs, ref_logprobs=refs[i],
                    max_completion_length=max_completion_length, sequence_lengths=mb.sequence_lengths, **totals,
                )  # fmt: skip
                if ppo:
                    returns = targets[i][1]
                    v_loss = value_head.value_loss(
                        values, stored[i][1], returns, mb.action_mask, algo.value_clip, totals["total_tokens"]
                    )
                    loss = loss + algo.vf_coef * v_loss
                    m["value/loss"] = float(v_loss.detach()) * totals["total_tokens"] / max(mb.num_tokens, 1)
                    m["value/explained_variance"] = float(
                        value_head.explained_variance(values.detach(), returns, mb.action_mask)
                    )
                (loss * share).backward()
                for key, value in m.items():
                    metric_sums[key] = metric_sums.get(key, 0.0) + float(value) * len(mb.index)
            distributed.all_reduce_gradients(_trained_parameters(ctx))
            grad_norm = _clip(ctx)
            ctx.step_guard.step(ctx.optimizer, grad_norm, f"optimizer step {steps + 1} of an update")
            ctx.lr_scheduler.step()
            ctx.optimizer.zero_grad(set_to_none=True)
            steps += 1
    d = torch.cat(diffs) if diffs else torch.zeros(0)
    if distributed.active():
        metrics = _global_metrics(metric_sums, d, totals["total_sequences"] * steps, grad_norm, steps)
    else:
        metrics = {key: value / (totals["total_sequences"] * steps) for key, value in metric_sums.items()}
        metrics["grad/norm"] = grad_norm
        metrics["train/optimizer_steps"] = float(steps)
        if d.numel():
            metrics["engine/logprob_diff_mean"] = float(d.mean())
            metrics["engine/logprob_diff_max"] = float(d.max())
    metrics["train/skipped_steps"] = float(ctx.step_guard.skipped)  # over the run so far (this process)
    return metrics


def _global_metrics(
    metric_sums: dict[str, float], diffs: torch.Tensor, sequence_steps: int, grad_norm: float, steps: int
) -> dict[str, float]:
    """:func:`optimize`'s metrics over every rank: sequence-weighted sums added up and divided by the
    global count, engine/trainer log-prob gaps pooled (mean over all tokens, max of the maxima). The
    gradient norm is the same on every rank (taken after the all-reduce)."""
    local = dict(metric_sums)
    local["diff/sum"] = float(diffs.sum()) if diffs.numel() else 0.0
    local["diff/count"] = float(diffs.numel())
    if diffs.numel():
        local["diff/max"] = float(diffs.max())
    pooled = distributed.reduce_metrics(local, 1.0, {"*": distributed.SUM, "diff/max": distributed.MAX})
    metrics = {key: value / sequence_steps for key, value in pooled.items() if not key.startswith("diff/")}
    metrics["grad/norm"] = grad_norm
    metrics["train/optimizer_steps"] = float(steps)
    if pooled["diff/count"]:
        metrics["engine/logprob_diff_mean"] = pooled["diff/sum"] / pooled["diff/count"]
        metrics["engine/logprob_diff_max"] = pooled["diff/max"]
    return metrics


def _trained_parameters(ctx: UpdateContext) -> list[torch.nn.Parameter]:
    """What the optimizer updates (the LoRA matrices, or every weight, and PPO's value head)."""
    return [p for group in ctx.optimizer.param_groups for p in group["params"] if p.requires_grad]


def _split(items: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


def _clip(ctx: UpdateContext) -> float:
    """Clip the global gradient norm; returns the norm before clipping."""
    params = [p for group in ctx.optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        return 0.0
    max_norm = ctx.config.train.max_grad_norm
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf")))


def reference_logprobs(ctx: UpdateContext, batches: list[MicroBatch]) -> list[torch.Tensor]:
    """Each micro-batch's log-probs under the KL penalty's reference policy (``kl_reference``): the
    policy RL started from (its weights swapped in for the duration), or the base model (the same
    modules with the LoRA adapter disabled). Either way no second model is held."""
    algo = ctx.config.algo

    def logprobs(mb: MicroBatch) -> torch.Tensor:
        return chosen_token_logprobs(
            ctx.model, mb.input_ids, None, mb.action_mask, ctx.config.rollout.temperature
        )

    if algo.kl_reference == "start":
        if ctx.reference_weights is None:
            raise ValueError("kl_reference = start needs the weights RL started from (UpdateContext.reference_weights)")
        with weights_swapped(ctx.model, ctx.reference_weights):
            return [logprobs(mb) for mb in batches]
    disable = getattr(ctx.model, "disable_adapter", None)
    if disable is None:
        raise ValueError(
            "kl_reference = base needs a LoRA policy (the base model is the policy with its adapter off); "
            "with full_finetune use kl_reference = start"
        )
    with disable():
        return [logprobs(mb) for mb in batches]


def _gae(ctx: UpdateContext, mb: MicroBatch, values: torch.Tensor):
    """PPO's per-token advantages and returns; the batch carries raw rewards as its advantages for PPO."""
    rewards = value_head.outcome_rewards(mb.advantages, mb.action_mask)
    algo = ctx.config.algo
    return value_head.gae(rewards, values, mb.action_mask, algo.gamma, algo.gae_lambda)


def rollout_metrics(episodes, rewards, group_ids, advantages, include) -> dict[str, float]:
    n = len(episodes)
    return {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std(unbiased=False)),
        "reward/max": float(rewards.max()),
        "reward/min": float(rewards.min()),
        "reward/exact_fraction": sum(bool(e.info.get("correct")) for e in episodes) / n,
        "reward/format_compliance": sum(bool(e.info.get("format_ok")) for e in episodes) / n,
        "reward/parse_errors": float(sum("parse_error" in e.info for e in episodes)),
        "groups/zero_variance_fraction": adv.zero_variance_fraction(rewards, group_ids),
        "groups/trained_fraction": float(include.float().mean()),
        "advantage/mean_abs": float(advantages.abs().mean()),
        "advantage/mean": float(advantages.mean()),
        "tokens/completion_mean": sum(e.num_generated for e in episodes) / n,
        "tokens/truncated_fraction": sum(e.truncated for e in episodes) / n,
        "reasoning/chars_mean": sum(e.info.get("reasoning_chars", 0) for e in episodes) / n,
    }
