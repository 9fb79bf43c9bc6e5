"""One policy update: rollout -> rewards -> advantages -> loss on micro-batches -> clip -> step.

Read top to bottom, this is the whole RL algorithm; the formulas live in :mod:`picorl.algos`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from picorl.algos import advantages as adv
from picorl.algos import losses, value_head
from picorl.config import Config
from picorl.engine.types import RolloutEngine, SamplingParams
from picorl.envs.base import Env
from picorl.rollout.episodes import Episode, run_episodes
from picorl.runtime import train_task_seeds
from picorl.train.batch import MicroBatch, make_micro_batches
from picorl.train.logprobs import chosen_token_logprobs
from picorl.train.step_options import (
    CompiledDecoder,
    TokenBudget,
    adapter_input_casts_off,
    autocast,
    micro_batch_tokens,
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
    compiled_decoder: CompiledDecoder = field(default_factory=CompiledDecoder)  # compile_train


def collect(ctx: UpdateContext, update: int) -> tuple[list[Episode], dict[str, float]]:
    """Sample ``num_tasks`` groups of k episodes. With ``zero_variance="dynamic"`` (DAPO) keep drawing
    groups, at most ``dynamic_max_draws`` rounds, until ``num_tasks`` groups have reward variance."""
    algo, rollout = ctx.config.algo, ctx.config.rollout
    num_tasks = rollout.num_tasks
    episodes: list[Episode] = []
    drawn, rounds = 0, 0
    while True:
        seeds = train_task_seeds(ctx.config.train.seed, update, drawn, num_tasks)
        params = SamplingParams(
            max_tokens=rollout.max_tokens, temperature=rollout.temperature, top_p=rollout.top_p,
            top_k=rollout.top_k, seed=seeds[0],
        )  # fmt: skip
        new = run_episodes(ctx.make_env, seeds, ctx.engine, ctx.tokenizer, params, k=rollout.k)
        for e in new:
            e.group += drawn
        episodes += new
        drawn += num_tasks
        rounds += 1
        if algo.zero_variance != "dynamic" or rounds >= algo.dynamic_max_draws:
            break
        informative = _informative_groups(episodes)
        if len(informative) >= num_tasks:
            break
    if algo.zero_variance == "dynamic":
        keep = set(sorted(_informative_groups(episodes))[:num_tasks])
        if len(keep) < num_tasks:  # bounded: fill with uninformative groups rather than loop forever
            keep |= set(sorted({e.group for e in episodes} - keep)[: num_tasks - len(keep)])
        episodes = [e for e in episodes if e.group in keep]
    return episodes, {"groups/drawn": float(drawn)}


def _informative_groups(episodes: list[Episode]) -> set[int]:
    """Groups whose rewards are not all equal (the only ones that carry a gradient)."""
    rewards = torch.tensor([e.reward for e in episodes])
    groups = torch.tensor([e.group for e in episodes])
    return set(groups[~adv.zero_variance_mask(rewards, groups)].tolist())


def rl_update(ctx: UpdateContext, update: int) -> tuple[dict[str, float], list[Episode]]:
    """Run update number ``update`` (0-based); returns its metrics and episodes."""
    t0 = time.perf_counter()
    on_gpu = ctx.device.type == "cuda"
    if on_gpu:  # peaks are the update's own, not those of the evaluation or SFT before it
        torch.cuda.reset_peak_memory_stats(ctx.device)
    ctx.engine.wake_up()
    episodes, metrics = collect(ctx, update)
    ctx.engine.sleep()
    if on_gpu:  # from here on the peak is training's own: the KV cache is released while it runs
        metrics["memory/rollout_peak_gb"] = torch.cuda.max_memory_allocated(ctx.device) / GIB
        torch.cuda.reset_peak_memory_stats(ctx.device)
    t_rollout = time.perf_counter() - t0

    rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
    group_ids = torch.tensor([e.group for e in episodes])
    lengths = torch.tensor([e.num_generated for e in episodes])
    truncated = torch.tensor([e.truncated for e in episodes])
    algo, max_tokens = ctx.config.algo, ctx.config.rollout.max_tokens
    shaped = adv.apply_overlong(rewards, lengths, truncated, max_tokens, algo)
    advantages = adv.compute_advantages(shaped, group_ids, algo)
    include = adv.loss_mask_for_sequences(shaped, group_ids, truncated, algo)
    if algo.algo != "ppo":  # PPO's advantages are per token (GAE), not one per sequence
        for episode, advantage in zip(episodes, advantages.tolist()):
            episode.advantage = advantage  # for samples.jsonl and the report's group browser

    t1 = time.perf_counter()
    train = ctx.config.train
    batches = make_micro_batches(
        episodes, advantages, train.micro_batch_size, ctx.tokenizer.pad_token_id, ctx.device,
        include.tolist(), max_tokens=micro_batch_tokens(train, ctx.token_budget, ctx.device),
    )  # fmt: skip
    with adapter_input_casts_off(ctx.model, train.train_autocast):
        train_metrics = optimize(ctx, batches, max_completion_length=max_tokens) if batches else {}
    if batches and train.micro_batch_tokens == 0:  # learn the bytes a padded token costs
        ctx.token_budget.end(ctx.device, max(mb.input_ids.numel() for mb in batches))
    t_train = time.perf_counter() - t1
    metrics["train/micro_batches"] = float(len(batches))

    metrics.update(rollout_metrics(episodes, rewards, group_ids, advantages, include))
    metrics.update(train_metrics)
    metrics.update(
        {
            "lr": ctx.lr_scheduler.get_last_lr()[0],
            "time/rollout_s": t_rollout,
            "time/train_s": t_train,
            "time/update_s": time.perf_counter() - t0,
            "engine/tokens_per_s": float(ctx.engine.last_stats.get("tokens_per_s", 0.0))
            or float(lengths.sum()) / max(t_rollout, 1e-9),
        }
    )
    if on_gpu:  # the training peak stays readable after the update (the trainer sizes the KV cache by it)
        metrics["memory/peak_gb"] = torch.cuda.max_memory_allocated(ctx.device) / GIB
        metrics["memory/kv_cache_gb"] = ctx.engine.kv_cache_bytes / GIB
    return metrics, episodes


def _forward(ctx: UpdateContext, mb: MicroBatch, with_values: bool):
    train = ctx.config.train
    out = chosen_token_logprobs(
        ctx.model,
        mb.input_ids,
        mb.attention_mask,
        mb.action_mask,
        ctx.config.rollout.temperature,
        return_hidden=with_values,
        decoder=ctx.compiled_decoder(ctx.model) if train.compile_train else None,
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
    totals = {
        "total_sequences": sum(len(mb.index) for mb in batches),
        "total_tokens": sum(mb.num_tokens for mb in batches),
    }
    with torch.no_grad():
        # Old log-probs are needed once the policy moves within an update; with one step they are
        # the current log-probs, detached, so the ratio is exactly 1 and no extra forward is spent.
        stored = [_forward(ctx, mb, ppo) for mb in batches] if algo.num_iterations > 1 or ppo else None
        refs = [_reference_logprobs(ctx, mb) for mb in batches] if algo.beta > 0 else [None] * len(batches)
        targets = [_gae(ctx, mb, values) for mb, (_, values) in zip(batches, stored)] if ppo else None

    metric_sums: dict[str, float] = {}
    diffs = []
    steps = 0
    grad_norm = 0.0
    ctx.model.train()
    for epoch in range(algo.num_iterations):
        minibatches = _split(list(range(len(batches))), algo.ppo_minibatches if ppo else 1)
        for minibatch in minibatches:
            share = len(batches) / len(minibatch)  # normalisers count the whole batch; a minibatch is a share
            for i in minibatch:
                mb = batches[i]
                logprobs, values = _forward(ctx, mb, ppo)
                old = stored[i][0] if stored is not None else logprobs.detach()
                if epoch == 0:
                    diffs.append((logprobs.detach() - mb.engine_logprobs)[mb.action_mask].abs())
                loss, m = losses.policy_loss(
                    logprobs, old, targets[i][0] if ppo else mb.advantages, mb.action_mask, algo,
                    engine_logprobs=mb.engine_logprobs, ref_logprobs=refs[i],
                    max_completion_length=max_completion_length, **totals,
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
            grad_norm = _clip(ctx)
            ctx.optimizer.step()
            ctx.lr_scheduler.step()
            ctx.optimizer.zero_grad(set_to_none=True)
            steps += 1
    metrics = {key: value / (totals["total_sequences"] * steps) for key, value in metric_sums.items()}
    metrics["grad/norm"] = grad_norm
    metrics["train/optimizer_steps"] = float(steps)
    d = torch.cat(diffs)
    if d.numel():
        metrics["engine/logprob_diff_mean"] = float(d.mean())
        metrics["engine/logprob_diff_max"] = float(d.max())
    return metrics


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


def _reference_logprobs(ctx: UpdateContext, mb: MicroBatch) -> torch.Tensor:
    """Log-probs under the reference policy: the same model with the LoRA adapter disabled, so the
    KL penalty needs no second copy of the weights."""
    disable = getattr(ctx.model, "disable_adapter", None)
    if disable is None:
        raise ValueError("beta > 0 needs a reference policy: use LoRA (the base model is the reference)")
    with disable():
        return chosen_token_logprobs(
            ctx.model, mb.input_ids, mb.attention_mask, mb.action_mask, ctx.config.rollout.temperature
        )


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
