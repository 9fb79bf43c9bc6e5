"""RL algorithms as pure tensor functions: advantages, policy/value losses, chosen-token log-probs.

No I/O and no model code here; the training loop (:mod:`picorl.train`) calls these.
"""

from picorl.algos.advantages import (
    apply_overlong,
    batch_mean_advantages,
    compute_advantages,
    group_advantages,
    group_success_filter,
    loss_mask_for_sequences,
    rloo_advantages,
    soft_overlong_penalty,
    zero_variance_fraction,
    zero_variance_mask,
)
from picorl.algos.config import AlgoConfig
from picorl.algos.losses import aggregate, k3_kl, policy_loss
from picorl.algos.value_head import (
    ValueHead,
    explained_variance,
    gae,
    outcome_rewards,
    value_head_param_group,
    value_loss,
)

__all__ = [
    "AlgoConfig",
    "ValueHead",
    "aggregate",
    "apply_overlong",
    "batch_mean_advantages",
    "compute_advantages",
    "explained_variance",
    "gae",
    "group_advantages",
    "group_success_filter",
    "k3_kl",
    "loss_mask_for_sequences",
    "outcome_rewards",
    "policy_loss",
    "rloo_advantages",
    "soft_overlong_penalty",
    "value_head_param_group",
    "value_loss",
    "zero_variance_fraction",
    "zero_variance_mask",
]
