"""The policy loss on per-token log-probs of the sampled tokens.

Everything takes ``[B, T]`` log-probs of the CHOSEN tokens only, never a vocabulary dimension, so no
full-vocabulary fp32 tensor exists for the batch (``picorl.train.logprobs`` computes them chunk by
chunk).

Per token t of sequence i (mask m, advantage A_i or A_it, log-probs under the policy being trained
``lp``, the policy that collected the batch ``old``, the rollout engine ``eng``, the reference ``ref``):

* ratio ``rho = exp(lp - old)``; clipped surrogate (PPO, Schulman et al. 2017, with DAPO's
  decoupled clip-higher, Yu et al. 2025): ``l_pg = -min(rho A, clip(rho, 1 - eps, 1 + eps_high) A)``.
  With one epoch ``old = lp.detach()``, so ``rho = 1`` and the gradient is exactly ``-A grad lp``:
  the REINFORCE / GRPO gradient.
* truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings
  you off-policy RL training"): the engine sampled from ``eng``, not ``old``, so ``l_pg`` is weighted by
  ``w = min(exp(old - eng), C)`` per token, or per sequence ``w_i = min(exp(sum_t (old - eng)), C)``;
  ``w`` is detached (a correction factor, not something to optimise).
* KL penalty to the reference, k3 estimator (Schulman, "Approximating KL divergence", 2020):
  ``k3 = exp(ref - lp) - (ref - lp) - 1 >= 0``, zero iff ``ref == lp``; loss ``l = w l_pg + beta k3``
  (weight then penalty, the order TRL uses).

Aggregation (``loss_type``), with normalisers for the WHOLE rollout batch passed in so that the sum of
micro-batch losses equals the loss of the batch (gradient accumulation is then exact). ``|o_i|`` and
``N_tok`` count the tokens sampled, also where the mask trains fewer of them (``credit``), so a
token's weight does not depend on which of its neighbours are trained:

* ``grpo`` (Shao et al. 2024): ``(1 / N_seq) sum_i (1 / |o_i|) sum_t l_it``
* ``dapo`` (Yu et al. 2025, token-level): ``(1 / N_tok) sum_i sum_t l_it``
* ``dr_grpo`` (Liu et al. 2025): ``(1 / (N_seq * L_max)) sum_i sum_t l_it``, ``L_max`` = max new tokens
"""

from __future__ import annotations

import torch

from picorl.algos.config import AlgoConfig

KL_CLAMP = 20.0  # |ref - lp| beyond this means the policy collapsed; clamp so k3 stays finite


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


def _masked_min_max(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not mask.any():
        zero = x.new_zeros(())
        return zero, zero
    return torch.where(mask, x, torch.inf).min(), torch.where(mask, x, -torch.inf).max()


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    total_sequences: int | None = None,
    total_tokens: int | None = None,
    max_completion_length: int | None = None,
    sequence_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a ``[B, T]`` per-token loss to a scalar as ``loss_type`` says (module docstring).

    ``total_sequences`` / ``total_tokens`` are the counts of the whole rollout batch (default: this
    micro-batch's); ``max_completion_length`` is required for ``dr_grpo``; ``sequence_lengths``
    (``[B]``) are the sampled tokens of each row, ``grpo``'s ``|o_i|`` (default: ``mask.sum(-1)``).
    """
    summed = torch.where(mask, per_token, 0.0)
    n_seq = per_token.shape[0] if total_sequences is None else total_sequences
    if loss_type == "grpo":
        lengths = mask.sum(-1) if sequence_lengths is None else sequence_lengths.to(summed.device)
        per_seq = summed.sum(-1) / lengths.clamp(min=1)
        return per_seq.sum() / max(n_seq, 1)
    if loss_type == "dapo":
        if total_tokens is None:
            n_tok = int(mask.sum() if sequence_lengths is None else sequence_lengths.sum())
        else:
            n_tok = total_tokens
        return summed.sum() / max(n_tok, 1)
    if loss_type == "dr_grpo":
        if max_completion_length is None or max_completion_length < 1:
            raise ValueError(
                "loss_type='dr_grpo' needs max_completion_length (the max new tokens per completion)"
            )
        return summed.sum() / (max(n_seq, 1) * max_completion_length)
    raise ValueError(f"loss_type must be grpo|dapo|dr_grpo, got {loss_type!r}")


def importance_weights(
    old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor, mode: str, cap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights ``min(pi_old / pi_engine, cap)``, detached, broadcastable to
    ``[B, T]``; also whether each weight hit the cap. ``mode``: ``token`` or ``sequence``."""
    log_ratio = torch.where(mask, old_logprobs.detach() - engine_logprobs.detach(), 0.0)
    if mode == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True)
    elif mode != "token":
        raise ValueError(f"importance_sampling must be token|sequence here, got {mode!r}")
    raw = log_ratio.clamp(max=80.0).exp()  # exp(80) is finite in fp32 and far above any cap
    return raw.clamp(max=cap), raw > cap


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference) from samples of the policy:
    ``exp(ref - lp) - (ref - lp) - 1``; >= 0, and 0 exactly where ``ref == lp``."""
    d = (ref_logprobs - logprobs).clamp(-KL_CLAMP, KL_CLAMP)
    return d.exp() - d - 1


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: AlgoConfig,
    engine_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    *,
    total_sequences: int | None = None,
    total_tokens: int | None = None,
    max_completion_length: int | None = None,
    sequence_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped, importance-corrected, optionally KL-penalised policy loss of one micro-batch.

    ``logprobs`` (with grad), ``old_logprobs``, ``engine_logprobs``, ``ref_logprobs``: ``[B, T]`` fp32
    log-probs of the sampled tokens; ``advantages``: ``[B]`` (one per sequence) or ``[B, T]``;
    ``mask``: ``[B, T]`` bool, True on the tokens to train (those the policy sampled, or fewer of them:
    then pass ``sequence_lengths``, the sampled tokens of each row). Pass the whole rollout batch's
    ``total_sequences`` / ``total_tokens`` so micro-batch losses add up to the batch loss.

    Returns the loss and metrics (floats, each a mean over THIS micro-batch, fit for averaging over
    micro-batches weighted by their sequences): ``loss/policy`` (the loss with this micro-batch's own
    normaliser), ``clip/fraction``, ``clip/low_fraction``, ``clip/high_fraction`` (tokens whose
    gradient the clip removed), ``ratio/mean``, ``ratio/min``, ``ratio/max``, ``approx_kl`` (k3 of
    KL(old || new)); with ``engine_logprobs``: ``is/log_ratio_min``, ``is/log_ratio_mean``,
    ``is/log_ratio_max`` (per token, ``old - engine``) and, when correcting, ``is/capped_fraction``,
    ``is/weight_mean``; with ``ref_logprobs``: ``kl/mean`` (k3 to the reference).
    """
    mask = mask.bool()
    if logprobs.shape != mask.shape or old_logprobs.shape != mask.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and mask "
            f"{tuple(mask.shape)} must all be [B, T]"
        )
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    if advantages.shape[0] != mask.shape[0]:
        raise ValueError(
            f"advantages {tuple(advantages.shape)} must be [B] or [B, T] with B = {mask.shape[0]}"
        )
    advantages = advantages.to(logprobs.dtype)

    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), 0.0)
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1 - cfg.epsilon, 1 + cfg.epsilon_high)
    per_token = -torch.minimum(ratio * advantages, clipped * advantages)

    metrics: dict[str, torch.Tensor] = {}
    if cfg.importance_sampling != "none":
        if engine_logprobs is None:
            raise ValueError(
                f"importance_sampling={cfg.importance_sampling!r} needs engine_logprobs (the rollout "
                "engine's log-probs of the sampled tokens); pass them or set importance_sampling=none"
            )
        weights, capped = importance_weights(
            old_logprobs, engine_logprobs, mask, cfg.importance_sampling, cfg.is_cap
        )
        per_token = per_token * weights
        if cfg.importance_sampling == "token":
            metrics["is/capped_fraction"] = _masked_mean(capped.float(), mask)
            metrics["is/weight_mean"] = _masked_mean(weights, mask)
        else:
            metrics["is/capped_fraction"] = capped.float().mean()
            metrics["is/weight_mean"] = weights.mean()
    if cfg.beta > 0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs (the reference policy's log-probs); or set beta=0")
        per_token = per_token + cfg.beta * k3_kl(logprobs, ref_logprobs)

    loss = aggregate(
        per_token, mask, cfg.loss_type, total_sequences, total_tokens, max_completion_length, sequence_lengths
    )

    with torch.no_grad():
        r = ratio.detach()
        low = (r < 1 - cfg.epsilon) & (advantages < 0) & mask
        high = (r > 1 + cfg.epsilon_high) & (advantages > 0) & mask
        r_min, r_max = _masked_min_max(r, mask)
        metrics |= {
            "loss/policy": aggregate(
                per_token.detach(), mask, cfg.loss_type, None, None, max_completion_length, sequence_lengths
            ),
            "clip/fraction": _masked_mean((low | high).float(), mask),
            "clip/low_fraction": _masked_mean(low.float(), mask),
            "clip/high_fraction": _masked_mean(high.float(), mask),
            "ratio/mean": _masked_mean(r, mask),
            "ratio/min": r_min,
            "ratio/max": r_max,
            "approx_kl": _masked_mean(r - 1 - log_ratio.detach(), mask),
        }
        if engine_logprobs is not None:
            d = old_logprobs.detach() - engine_logprobs
            d_min, d_max = _masked_min_max(d, mask)
            metrics |= {
                "is/log_ratio_min": d_min,
                "is/log_ratio_mean": _masked_mean(d, mask),
                "is/log_ratio_max": d_max,
            }
        if ref_logprobs is not None:
            metrics["kl/mean"] = _masked_mean(k3_kl(logprobs.detach(), ref_logprobs), mask)
        # one device sync for all metrics instead of one per metric
        values = torch.stack([v.float().reshape(()) for v in metrics.values()]).tolist()
    return loss, dict(zip(metrics.keys(), values))
