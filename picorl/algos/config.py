"""Algorithm settings (the ``[algo]`` config section), validated on construction.

Option names follow TRL where it has one (``beta``, ``epsilon``, ``epsilon_high``, ``loss_type``,
``scale_rewards``, ``num_iterations``). Fields left at ``None`` ("auto") are resolved from ``algo``
in ``__post_init__``, so the saved config holds the values actually used:

============  =========================  ==============  ===========  ==============
algo          advantage                  scale_rewards   loss_type    num_iterations
============  =========================  ==============  ===========  ==============
grpo          group mean, / group std    group           grpo         1
dr_grpo       group mean                 none            dr_grpo      1
rloo          leave-one-out mean         none            dr_grpo      1
reinforce     batch mean                 none            dr_grpo      1
ppo           GAE with a value head      none            dapo         2
============  =========================  ==============  ===========  ==============

So a plain ``grpo`` user gets the DeepSeekMath GRPO objective (Shao et al. 2024): rewards
standardised within each group of k samples of one prompt, token losses averaged per sequence
then over sequences, ratio clipped at 1 +- 0.2, no KL (``beta = 0``, as in Dr. GRPO and DAPO), one
optimizer step per rollout batch, and truncated importance sampling against the rollout engine's
log-probs (cap 2). The seed system's GRPO is ``algo="grpo", scale_rewards="none"`` (it never
divided by the std). ``dr_grpo`` (Liu et al. 2025) drops both the std division and the per-sequence
length normalisation, the two biases that paper identifies; ``rloo`` and ``reinforce`` default to the
same constant normaliser because they are sequence-level estimators: every token of a completion
shares its advantage and no length normalisation is implied. PPO defaults to two epochs so the
ratio and clipping actually act (with one epoch the ratio is always 1 and nothing is ever clipped).
"""

from __future__ import annotations

from dataclasses import dataclass

from picorl.options import check, choice, opt

ALGOS = ("grpo", "dr_grpo", "rloo", "reinforce", "ppo")
SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
IMPORTANCE_SAMPLING = ("none", "token", "sequence")
ZERO_VARIANCE = ("keep", "drop", "dynamic")
KL_REFERENCES = ("start", "base")
OVERLONG = ("keep", "mask", "soft_penalty")
CREDITS = ("sequence", "divergence")

# algo -> (scale_rewards, loss_type, num_iterations) used where the field is left at None.
AUTO = {
    "grpo": ("group", "grpo", 1),
    "dr_grpo": ("none", "dr_grpo", 1),
    "rloo": ("none", "dr_grpo", 1),
    "reinforce": ("none", "dr_grpo", 1),
    "ppo": ("none", "dapo", 2),
}


@dataclass
class AlgoConfig:
    algo: str = opt(
        "grpo",
        "RL algorithm: grpo (group mean/std baseline, Shao et al. 2024), dr_grpo (group mean, no length "
        "bias, Liu et al. 2025), rloo (leave-one-out baseline, Ahmadian et al. 2024), reinforce (batch-mean "
        "baseline) or ppo (value head + GAE, Schulman et al. 2017).",
    )
    scale_rewards: str | None = opt(
        None,
        "Divide advantages by a reward std: group (std within each group, original GRPO), batch (std over "
        "the whole batch), none (Dr. GRPO). auto: group for grpo, none otherwise.",
    )
    loss_type: str | None = opt(
        None,
        "Token-loss aggregation: grpo (token mean per sequence, then mean over sequences), dapo (sum over "
        "all tokens / number of tokens, Yu et al. 2025), dr_grpo (sum / (sequences x max_tokens), Liu et al. "
        "2025). auto: see the table in picorl/algos/config.py.",
    )
    epsilon: float = opt(0.2, "PPO ratio clip: the ratio is kept within [1 - epsilon, 1 + epsilon_high].")
    epsilon_high: float | None = opt(
        None, "Upper ratio clip (DAPO clip-higher uses 0.28). auto: equal to epsilon."
    )
    num_iterations: int | None = opt(
        None,
        "Optimization epochs over one rollout batch, with stored old log-probs (mu in the GRPO paper). "
        "auto: 1, or 2 for ppo so that ratio clipping acts.",
    )
    beta: float = opt(
        0.0, "KL penalty coefficient toward the reference policy (kl_reference; k3 estimator). 0 = off."
    )
    kl_reference: str = opt(
        "start",
        "The reference policy of the KL penalty (beta > 0): start (the policy RL starts from, i.e. after "
        "SFT or --init-adapter; costs a copy of the trained weights, kept in checkpoints) or base (the base "
        "model, the LoRA adapter switched off: no copy, but after SFT it is the model before SFT).",
    )
    importance_sampling: str = opt(
        "token",
        "Correct for the rollout engine's log-probs differing from the trainer's: token (truncated weight "
        "per token), sequence (one weight per completion) or none.",
    )
    is_cap: float = opt(
        2.0, "Truncation cap C of the importance weights: w = min(pi_trainer / pi_engine, C)."
    )
    zero_variance: str = opt(
        "keep",
        "Groups whose rewards are all equal: keep (in the loss normaliser), drop (out of the loss), or "
        "dynamic (DAPO: draw more groups until the batch has num_tasks informative ones, bounded).",
    )
    dynamic_max_draws: int = opt(
        3, "With zero_variance=dynamic: at most this many rollout rounds per update."
    )
    skip_group_success_above: float | None = opt(
        None,
        "Leave out groups whose mean success (reward) is above this: too easy (Atropos-style). Off unless set.",
    )
    skip_group_success_below: float | None = opt(
        None, "Leave out groups whose mean success (reward) is below this: too hard. Off unless set."
    )
    overlong: str = opt(
        "keep",
        "Completions cut at max_tokens: keep (train on them as they are), mask (leave them out of the loss, "
        "DAPO overlong filtering) or soft_penalty (DAPO soft overlong punishment added to the reward).",
    )
    overlong_buffer: int | None = opt(
        None,
        "soft_penalty: the penalty ramps from 0 to -1 over the last this-many tokens before max_tokens "
        "(L_cache in DAPO). auto: a quarter of max_tokens.",
    )
    overlong_penalty: float = opt(1.0, "soft_penalty: scale of the length penalty added to the reward.")
    credit: str = opt(
        "sequence",
        "Which tokens take a completion's advantage: sequence (all of them, as published) or divergence (a "
        "completion with a negative advantage is trained only on the token where it leaves the longest common "
        "prefix it shares with a better completion of its group: the slip, not the correct steps after it; "
        "the length normalisers still count all its tokens; picorl/algos/credit.py says why).",
    )
    gamma: float = opt(1.0, "PPO discount per token (1: an outcome reward is not discounted).")
    gae_lambda: float = opt(
        1.0,
        "PPO GAE lambda (Schulman et al. 2016). 1 = Monte-Carlo returns minus the value baseline (unbiased "
        "while the value head is still learning); lower trades bias for variance.",
    )
    vf_coef: float = opt(0.1, "PPO: weight of the value loss added to the policy loss.")
    value_clip: float = opt(
        0.2, "PPO: keep new values within this of the old ones in the value loss (0 = no clipping)."
    )
    value_lr: float = opt(
        1e-4,
        "PPO: learning rate of the value head's own parameter group (a fresh head needs more than LoRA).",
    )
    ppo_minibatches: int = opt(1, "PPO: optimizer steps per epoch, each on a share of the rollout batch.")

    @property
    def kl_to_start(self) -> bool:
        """Whether the KL penalty needs the weights RL started from (a copy kept through checkpoints)."""
        return self.beta > 0 and self.kl_reference == "start"

    def __post_init__(self) -> None:
        choice("algo", self.algo, ALGOS)
        auto_scale, auto_loss, auto_iterations = AUTO[self.algo]
        if self.scale_rewards is None:
            self.scale_rewards = auto_scale
        if self.loss_type is None:
            self.loss_type = auto_loss
        if self.num_iterations is None:
            self.num_iterations = auto_iterations
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon
        choice("scale_rewards", self.scale_rewards, SCALE_REWARDS)
        choice("loss_type", self.loss_type, LOSS_TYPES)
        choice("importance_sampling", self.importance_sampling, IMPORTANCE_SAMPLING)
        choice("zero_variance", self.zero_variance, ZERO_VARIANCE)
        choice("overlong", self.overlong, OVERLONG)
        choice("kl_reference", self.kl_reference, KL_REFERENCES)
        choice("credit", self.credit, CREDITS)
        check(
            self.algo != "ppo" or self.credit == "sequence",
            "credit=divergence assigns one advantage per completion; ppo's advantages are per token (GAE): "
            "use credit=sequence with ppo",
        )
        check(
            self.algo not in ("rloo", "ppo") or self.scale_rewards == "none",
            f"scale_rewards={self.scale_rewards!r} has no meaning for algo={self.algo!r}; use scale_rewards=none",
        )
        check(
            self.algo != "reinforce" or self.scale_rewards != "group",
            "reinforce has no groups: use scale_rewards=batch (divide by the batch std) or none",
        )
        check(0 < self.epsilon < 1, f"epsilon must be in (0, 1), got {self.epsilon}")
        check(self.epsilon_high > 0, f"epsilon_high must be > 0, got {self.epsilon_high}")
        check(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        check(self.beta >= 0, f"beta must be >= 0 (0 = no KL penalty), got {self.beta}")
        check(
            self.is_cap >= 1,
            f"is_cap must be >= 1 (a cap below 1 would shrink on-policy tokens), got {self.is_cap}",
        )
        check(self.dynamic_max_draws >= 1, f"dynamic_max_draws must be >= 1, got {self.dynamic_max_draws}")
        above, below = self.skip_group_success_above, self.skip_group_success_below
        if above is not None and below is not None:
            check(
                below < above,
                f"skip_group_success_below ({below}) must be < skip_group_success_above ({above})",
            )
        check(
            self.overlong_buffer is None or self.overlong_buffer >= 1,
            f"overlong_buffer must be >= 1 token, got {self.overlong_buffer}",
        )
        check(self.overlong_penalty >= 0, f"overlong_penalty must be >= 0, got {self.overlong_penalty}")
        check(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}")
        check(0 <= self.gae_lambda <= 1, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        check(self.vf_coef >= 0, f"vf_coef must be >= 0, got {self.vf_coef}")
        check(self.value_clip >= 0, f"value_clip must be >= 0 (0 = off), got {self.value_clip}")
        check(self.value_lr > 0, f"value_lr must be > 0, got {self.value_lr}")
        check(self.ppo_minibatches >= 1, f"ppo_minibatches must be >= 1, got {self.ppo_minibatches}")
