"""Per-sequence advantages from per-sequence rewards, and which sequences enter the loss.

Rewards arrive one per sequence with a group index per sequence (a group is k samples of ONE
prompt; groups may differ in size and their indices need not be contiguous). Everything here is
pure tensor math on CPU or GPU: no I/O, no model.

Estimators (r_i the reward of sequence i, G(i) its group, n its group size):

* GRPO (Shao et al. 2024, DeepSeekMath, eq. for outcome supervision):
  ``A_i = (r_i - mean_G(i) r) / (std_G(i) r + eps)``; with ``scale="none"`` the division is dropped,
  which is Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"); ``scale="batch"`` divides
  by the std of the whole batch instead (group mean, batch std).
* RLOO (Ahmadian et al. 2024, "Back to basics"): ``A_i = r_i - mean_{j in G(i), j != i} r_j
  = n / (n - 1) * (r_i - mean_G(i) r)``.
* REINFORCE with a batch-mean baseline (Williams 1992): ``A_i = r_i - mean_batch r``.
* PPO: advantages come per token from GAE (:func:`picorl.algos.value_head.gae`); here PPO gets the
  raw outcome reward, which the trainer places on the last generated token.

Stds are sample stds (Bessel's n - 1, as TRL and verl use). A group whose rewards are all equal
(which includes a group of one) gets advantage exactly 0 under every group estimator, never a
0/eps rounding residue or a NaN.
"""

from __future__ import annotations

import torch

from picorl.algos.config import AlgoConfig

STD_EPS = 1e-4  # added to the std before dividing (TRL's value); only matters for near-equal rewards


def _dense_groups(group_ids: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids to 0..G-1; returns (dense id per sequence, G)."""
    if group_ids.dim() != 1 or group_ids.numel() != n:
        raise ValueError(
            f"group_ids must be 1-D with one id per reward ({n}), got shape {tuple(group_ids.shape)}"
        )
    uniq, dense = torch.unique(group_ids, return_inverse=True)
    return dense, uniq.numel()


def _check_rewards(rewards: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; check the environment's reward function")
    return rewards.float()


def _group_stats(rewards: torch.Tensor, dense: torch.Tensor, num_groups: int):
    """Per sequence: its group's size, mean, sample std and whether all its rewards are equal."""
    size = torch.zeros(num_groups, device=rewards.device).index_add_(0, dense, torch.ones_like(rewards))
    mean = torch.zeros(num_groups, device=rewards.device).index_add_(0, dense, rewards) / size
    sq = torch.zeros(num_groups, device=rewards.device).index_add_(0, dense, (rewards - mean[dense]) ** 2)
    std = (sq / (size - 1).clamp(min=1)).sqrt()
    hi = torch.full((num_groups,), -torch.inf, device=rewards.device).scatter_reduce(
        0, dense, rewards, "amax"
    )
    lo = torch.full((num_groups,), torch.inf, device=rewards.device).scatter_reduce(0, dense, rewards, "amin")
    return size[dense], mean[dense], std[dense], (hi == lo)[dense]


def _flatten(rewards: torch.Tensor, group_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept either ``rewards[G, k]`` (one group per row) or ``rewards[N]`` with ``group_ids[N]``."""
    if group_ids is None:
        if rewards.dim() != 2:
            raise ValueError(
                f"without group_ids, rewards must be [groups, k]; got shape {tuple(rewards.shape)}"
            )
        g, k = rewards.shape
        return rewards.reshape(-1), torch.arange(g, device=rewards.device).repeat_interleave(k)
    if rewards.dim() != 1:
        raise ValueError(f"with group_ids, rewards must be 1-D; got shape {tuple(rewards.shape)}")
    return rewards, group_ids


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor | None = None, scale: str = "group", eps: float = STD_EPS
) -> torch.Tensor:
    """GRPO / Dr. GRPO advantages: reward minus its group's mean, optionally over a std.

    ``rewards`` is ``[G, k]`` (rows are groups) or ``[N]`` with ``group_ids``; the result has the
    same shape. ``scale``: ``"group"`` divides by the group's std (original GRPO), ``"batch"`` by the
    std of all rewards, ``"none"`` not at all (Dr. GRPO). All-equal groups get exactly 0.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be group|batch|none, got {scale!r}")
    shape = rewards.shape
    flat, ids = _flatten(_check_rewards(rewards), group_ids)
    dense, num_groups = _dense_groups(ids, flat.numel())
    _, mean, std, constant = _group_stats(flat, dense, num_groups)
    adv = flat - mean
    if scale == "group":
        adv = adv / (std + eps)
    elif scale == "batch":
        adv = adv / (flat.std() + eps if flat.numel() > 1 else 1.0)
    return torch.where(constant, torch.zeros_like(adv), adv).reshape(shape)


def rloo_advantages(rewards: torch.Tensor, group_ids: torch.Tensor | None = None) -> torch.Tensor:
    """RLOO advantages: reward minus the mean of the OTHER rewards of its group.

    Equals ``n / (n - 1) * (r_i - group mean)``; a group of one has no other sample, so 0.
    Shapes as in :func:`group_advantages`.
    """
    shape = rewards.shape
    flat, ids = _flatten(_check_rewards(rewards), group_ids)
    dense, num_groups = _dense_groups(ids, flat.numel())
    size, mean, _, constant = _group_stats(flat, dense, num_groups)
    adv = size / (size - 1).clamp(min=1) * (flat - mean)
    return torch.where(constant, torch.zeros_like(adv), adv).reshape(shape)


def batch_mean_advantages(rewards: torch.Tensor, scale: str = "none", eps: float = STD_EPS) -> torch.Tensor:
    """REINFORCE with a batch-mean baseline: ``r_i - mean(r)``; ``scale="batch"`` also divides by the
    batch std. A batch of equal rewards gives exactly 0."""
    if scale not in ("batch", "none"):
        raise ValueError(f"batch_mean_advantages: scale must be batch|none, got {scale!r}")
    r = _check_rewards(rewards)
    if r.numel() == 0 or bool((r == r.flatten()[0]).all()):
        return torch.zeros_like(r)
    adv = r - r.mean()
    return adv / (r.std() + eps) if scale == "batch" else adv


def compute_advantages(rewards: torch.Tensor, group_ids: torch.Tensor, cfg: AlgoConfig) -> torch.Tensor:
    """One advantage per sequence for ``cfg.algo`` (see the module docstring for each formula).

    For ``ppo`` this returns the rewards unchanged: its per-token advantages come from GAE.
    """
    rewards = _check_rewards(rewards)
    if cfg.algo in ("grpo", "dr_grpo"):
        return group_advantages(rewards, group_ids, cfg.scale_rewards)
    if cfg.algo == "rloo":
        return rloo_advantages(rewards, group_ids)
    if cfg.algo == "reinforce":
        return batch_mean_advantages(rewards, cfg.scale_rewards)
    if cfg.algo == "ppo":
        return rewards.clone()
    raise ValueError(f"unknown algo {cfg.algo!r}")


def zero_variance_mask(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """True for each sequence whose group's rewards are all equal (no learning signal for a group
    baseline; a group of one counts as zero-variance)."""
    dense, num_groups = _dense_groups(group_ids, rewards.numel())
    return _group_stats(_check_rewards(rewards), dense, num_groups)[3]


def zero_variance_fraction(rewards: torch.Tensor, group_ids: torch.Tensor) -> float:
    """Fraction of GROUPS (not sequences) whose rewards are all equal."""
    dense, num_groups = _dense_groups(group_ids, rewards.numel())
    constant = zero_variance_mask(rewards, group_ids)
    per_group = torch.zeros(num_groups, dtype=torch.bool, device=rewards.device).index_fill_(
        0, dense[constant], True
    )
    return float(per_group.float().mean()) if num_groups else 0.0


def group_success_filter(
    success: torch.Tensor, group_ids: torch.Tensor, above: float | None = None, below: float | None = None
) -> torch.Tensor:
    """True for sequences whose group's mean success lies within ``[below, above]``.

    Atropos' letter-counting environment skips groups whose average score exceeds a threshold (too
    easy to teach anything); ``below`` is the mirror for too-hard groups. ``success`` is per sequence
    in [0, 1] (the reward, or 1.0 for an exact answer); ``None`` disables a side.
    """
    dense, num_groups = _dense_groups(group_ids, success.numel())
    mean = _group_stats(_check_rewards(success), dense, num_groups)[1]
    keep = torch.ones_like(mean, dtype=torch.bool)
    if above is not None:
        keep &= mean <= above
    if below is not None:
        keep &= mean >= below
    return keep


def soft_overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), per sequence, in [-1, 0]:

    ``0`` if ``L <= L_max - L_cache``; ``((L_max - L_cache) - L) / L_cache`` if ``L_max - L_cache < L <=
    L_max``; ``-1`` beyond. ``L`` is the number of generated tokens, ``L_cache`` the ``buffer``.
    """
    if not 1 <= buffer <= max_length:
        raise ValueError(f"overlong_buffer must be in [1, max_tokens={max_length}], got {buffer}")
    start = max_length - buffer
    return ((start - lengths.float()) / buffer).clamp(min=-1.0, max=0.0)


def apply_overlong(
    rewards: torch.Tensor, lengths: torch.Tensor, truncated: torch.Tensor, max_length: int, cfg: AlgoConfig
) -> torch.Tensor:
    """Rewards after the overlong option: with ``overlong="soft_penalty"`` adds ``overlong_penalty *``
    :func:`soft_overlong_penalty` (a truncated completion always gets the full -1); otherwise returns
    the rewards unchanged (``mask`` acts in :func:`loss_mask_for_sequences`)."""
    rewards = _check_rewards(rewards)
    if cfg.overlong != "soft_penalty":
        return rewards
    buffer = cfg.overlong_buffer if cfg.overlong_buffer is not None else max(1, max_length // 4)
    penalty = soft_overlong_penalty(lengths, max_length, buffer)
    penalty = torch.where(truncated.bool(), torch.full_like(penalty, -1.0), penalty)
    return rewards + cfg.overlong_penalty * penalty


def loss_mask_for_sequences(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    truncated: torch.Tensor,
    cfg: AlgoConfig,
) -> torch.Tensor:
    """True for each sequence that enters the loss (and its normaliser).

    Left out: groups with all-equal rewards when ``zero_variance`` is ``drop`` or ``dynamic`` (so
    they do not dilute the token or sequence counts); groups whose mean reward is outside the
    success thresholds; truncated completions when ``overlong="mask"``.
    """
    keep = torch.ones(rewards.numel(), dtype=torch.bool, device=rewards.device)
    if cfg.zero_variance in ("drop", "dynamic"):
        keep &= ~zero_variance_mask(rewards, group_ids)
    if cfg.skip_group_success_above is not None or cfg.skip_group_success_below is not None:
        keep &= group_success_filter(
            rewards,
            group_ids,
            cfg.skip_group_success_above,
            cfg.skip_group_success_below,
        )
    if cfg.overlong == "mask":
        keep &= ~truncated.bool().to(keep.device)
    return keep
