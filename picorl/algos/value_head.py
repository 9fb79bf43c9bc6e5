"""PPO's critic: a value head on the policy's final hidden states, GAE, and the clipped value loss.

The head must exist before the optimizer is built and be in its parameter groups (the seed created
it after the optimizer, so it never trained); :func:`value_head_param_group` gives the
group to add. Formulas: GAE from Schulman et al. 2016 ("High-dimensional continuous control using
generalized advantage estimation"), clipped value loss as in the PPO reference implementation
(Schulman et al. 2017, OpenAI baselines ppo2).
"""

from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    """``V(s_t) = w . h_t + b`` on the final hidden state ``h_t`` of each position.

    Zero-initialised: every value starts at 0, so the first advantages are the plain returns (no
    random critic noise injected into the policy gradient) while the weight still gets the gradient
    ``dL/dV * h_t`` and learns from the first step. Parameters stay fp32 whatever the model's dtype;
    the hidden states are cast to fp32 (a ``B x T x H`` tensor, small next to a vocabulary).
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        self.linear = nn.Linear(hidden_size, 1, dtype=torch.float32)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden[B, T, H]`` -> values ``[B, T]`` in fp32."""
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


def value_head_param_group(head: ValueHead, lr: float) -> dict:
    """The optimizer parameter group for ``head`` (its own learning rate, no weight decay): pass it
    with the policy's parameters when the optimizer is BUILT, e.g.
    ``AdamW([{"params": policy_params}, value_head_param_group(head, cfg.value_lr)], lr=...)``."""
    return {"params": list(head.parameters()), "lr": lr, "weight_decay": 0.0}


def outcome_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place one reward per sequence (``[B]``) on its last sampled token: a ``[B, T]`` tensor, zero
    elsewhere. Sequences with no sampled token get nothing."""
    mask = mask.bool()
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    t = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, t, -1).max(dim=1).values
    rows = (last >= 0).nonzero(as_tuple=True)[0]
    out[rows, last[rows]] = rewards.float().to(mask.device)[rows]
    return out


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the sampled tokens of each row.

    ``delta_t = r_t + gamma V(s_next) - V(s_t)`` and ``A_t = delta_t + gamma lam A_next``, where "next"
    is the next position with ``mask`` True (positions off the mask, such as the environment's tokens
    between turns of a multi-turn episode, are skipped) and ``V = 0`` after the last one (the episode
    ends). Returns ``(advantages, returns = advantages + values)``, ``[B, T]`` fp32, zero off the mask.
    With ``gamma = lam = 1`` and an outcome reward R (:func:`outcome_rewards`), ``A_t = R - V(s_t)``.
    """
    if not (rewards.shape == values.shape == mask.shape):
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask {tuple(mask.shape)} must all be [B, T]"
        )
    mask = mask.bool()
    rewards, values = rewards.float(), values.detach().float()
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        adv = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * next_adv
        advantages[:, t] = torch.where(m, adv, 0.0)
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, adv, next_adv)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
    total_tokens: int | None = None,
) -> torch.Tensor:
    """Clipped value loss ``0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``, summed over
    the sampled tokens and divided by ``total_tokens`` (the whole rollout batch's count, so micro-batch
    losses add up; default this micro-batch's). ``clip`` None or 0 gives the plain squared error."""
    mask = mask.bool()
    err = (values - returns) ** 2
    if clip:
        clipped = old_values.detach() + (values - old_values.detach()).clamp(-clip, clip)
        err = torch.maximum(err, (clipped - returns) ** 2)
    n = int(mask.sum()) if total_tokens is None else total_tokens
    return 0.5 * torch.where(mask, err, 0.0).sum() / max(n, 1)


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over the sampled tokens: 1 for a perfect critic, 0 for one that
    predicts the mean, negative for worse. 0 when the returns have no variance (nothing to explain)."""
    mask = mask.bool()
    r, v = returns[mask].float(), values[mask].float()
    if r.numel() < 2:
        return torch.zeros((), device=values.device)
    var_r = r.var(unbiased=False)
    if var_r == 0:
        return torch.zeros((), device=values.device)
    return 1 - (r - v).var(unbiased=False) / var_r
