"""Advantage estimators, zero-variance and success filters, overlong handling, and AlgoConfig.

Expected numbers are worked by hand in the comments (never produced by the code under test).
"""

from __future__ import annotations

import math

import pytest
import torch

from picorl.algos import advantages as adv
from picorl.algos.config import AlgoConfig

T = torch.tensor


def close(actual: torch.Tensor, expected: list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, T(expected, dtype=torch.float32), atol=atol, rtol=0)


# Two groups of 4: [1, 0, 0, 1] (mean 0.5) and [0.5, 0.5, 0.5, 1] (mean 0.625).
REWARDS = T([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 1.0]])


def test_group_mean_without_std_is_dr_grpo():
    # r - group mean: [.5, -.5, -.5, .5] and [-.125, -.125, -.125, .375]
    out = adv.group_advantages(REWARDS, scale="none")
    close(out, [[0.5, -0.5, -0.5, 0.5], [-0.125, -0.125, -0.125, 0.375]])


def test_group_mean_and_std_is_original_grpo():
    # group 1: sample std = sqrt((4 * 0.25) / 3) = 1/sqrt(3); 0.5 * sqrt(3) = 0.8660254
    # group 2: squared deviations 3 * 0.015625 + 0.140625 = 0.1875; / 3 = 0.0625; std 0.25
    #          -> -0.125 / 0.25 = -0.5, 0.375 / 0.25 = 1.5
    out = adv.group_advantages(REWARDS, scale="group", eps=0.0)
    h = math.sqrt(3) / 2
    close(out, [[h, -h, -h, h], [-0.5, -0.5, -0.5, 1.5]], atol=1e-5)
    # the default eps (1e-4) only nudges the divisor: 0.5 / (0.5773503 + 1e-4) = 0.8658754
    assert adv.group_advantages(REWARDS, scale="group")[0, 0].item() == pytest.approx(0.8658754, abs=1e-6)


def test_group_mean_with_batch_std():
    # all 8 rewards: mean 0.5625, squared deviations sum 1.21875, / 7 -> std 0.41726148
    # 0.5 / 0.41726148 = 1.1982894; -0.125 / .. = -0.2995723; 0.375 / .. = 0.8987170
    out = adv.group_advantages(REWARDS, scale="batch", eps=0.0)
    a, b, c = 1.1982894, -0.2995723, 0.8987170
    close(out, [[a, -a, -a, a], [b, b, b, c]], atol=1e-5)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("eps", [0.0, 1e-4])
def test_identical_rewards_give_exact_zeros_never_nan(scale, eps):
    # In fp32 the mean of eight 0.1s is not exactly 0.1 (r - mean = 7.5e-9), nor that of eight 0.9s 0.9,
    # so a naive (r - mean) / (std + eps) leaves residues (and eps=0 gives 0/0 = NaN): must be exact 0.
    rewards = T([[0.1] * 8, [0.9] * 8])
    out = adv.group_advantages(rewards, scale=scale, eps=eps)
    assert torch.equal(out, torch.zeros(2, 8))
    assert torch.equal(adv.rloo_advantages(rewards), torch.zeros(2, 8))


def test_ragged_groups_with_a_group_of_one():
    # group 5 = [1, 0, 1] (mean 2/3), group 9 = [0.7] alone; ids need not be contiguous
    rewards, ids = T([1.0, 0.0, 0.7, 1.0]), T([5, 5, 9, 5])
    close(adv.group_advantages(rewards, ids, scale="none"), [1 / 3, -2 / 3, 0.0, 1 / 3])
    # std of [1, 0, 1] = sqrt((1/9 + 4/9 + 1/9) / 2) = sqrt(1/3); (1/3) / sqrt(1/3) = 0.5773503
    close(adv.group_advantages(rewards, ids, scale="group", eps=0.0), [0.5773503, -1.1547005, 0.0, 0.5773503])
    # RLOO: 1 - mean(0, 1) = 0.5; 0 - mean(1, 1) = -1; a lone sample has no others -> 0
    close(adv.rloo_advantages(rewards, ids), [0.5, -1.0, 0.0, 0.5])


def test_rloo_worked_example():
    # [1, 0, 0, 0]: 1 - 0 = 1; 0 - 1/3 = -1/3. [2, 4]: 2 - 4 = -2, 4 - 2 = 2
    close(adv.rloo_advantages(T([[1.0, 0.0, 0.0, 0.0]])), [[1.0, -1 / 3, -1 / 3, -1 / 3]])
    close(adv.rloo_advantages(T([[2.0, 4.0]])), [[-2.0, 2.0]])


def test_batch_mean_reinforce():
    # mean 0.5 -> [.5, -.5, -.5, .5, 0]; sample std of the same = sqrt(1 / 4) = 0.5
    rewards = T([1.0, 0.0, 0.0, 1.0, 0.5])
    close(adv.batch_mean_advantages(rewards), [0.5, -0.5, -0.5, 0.5, 0.0])
    close(adv.batch_mean_advantages(rewards, scale="batch", eps=0.0), [1.0, -1.0, -1.0, 1.0, 0.0])
    assert torch.equal(adv.batch_mean_advantages(T([0.3, 0.3, 0.3]), scale="batch"), torch.zeros(3))
    assert torch.equal(adv.batch_mean_advantages(T([0.3])), torch.zeros(1))


def test_compute_advantages_dispatches_on_algo():
    rewards, ids = T([1.0, 0.0, 0.0, 0.5, 0.5, 1.0]), T([0, 0, 0, 3, 3, 3])
    # groups [1, 0, 0] (mean 1/3) and [.5, .5, 1] (mean 2/3)
    close(
        adv.compute_advantages(rewards, ids, AlgoConfig(algo="dr_grpo")),
        [2 / 3, -1 / 3, -1 / 3, -1 / 6, -1 / 6, 1 / 3],
    )
    # grpo default divides by the group std (+ 1e-4, hence atol 5e-4): group 0 std sqrt((4/9 + 1/9 + 1/9) / 2)
    # = 0.5773503 -> (2/3) / 0.5773503 = 1.1547005, (1/3) / .. = 0.5773503; group 3 std sqrt((1/36 + 1/36
    # + 4/36) / 2) = 0.2886751 -> (1/6) / .. = 0.5773503, (1/3) / .. = 1.1547005
    grpo = adv.compute_advantages(rewards, ids, AlgoConfig())
    close(grpo, [1.1547005, -0.5773503, -0.5773503, -0.5773503, -0.5773503, 1.1547005], atol=5e-4)
    # rloo: 1 - 0 = 1, 0 - 0.5 = -0.5; 0.5 - 0.75 = -0.25, 1 - 0.5 = 0.5
    close(adv.compute_advantages(rewards, ids, AlgoConfig(algo="rloo")), [1.0, -0.5, -0.5, -0.25, -0.25, 0.5])
    # reinforce: batch mean 0.5
    close(
        adv.compute_advantages(rewards, ids, AlgoConfig(algo="reinforce")), [0.5, -0.5, -0.5, 0.0, 0.0, 0.5]
    )
    # ppo: the raw outcome reward (GAE makes the per-token advantages)
    close(adv.compute_advantages(rewards, ids, AlgoConfig(algo="ppo")), rewards.tolist())


def test_zero_variance_mask_and_fraction():
    rewards, ids = T([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.2]), T([0, 0, 1, 1, 2, 2, 3])
    mask = adv.zero_variance_mask(rewards, ids)
    assert mask.tolist() == [True, True, False, False, True, True, True]  # group 3 is a group of one
    assert adv.zero_variance_fraction(rewards, ids) == pytest.approx(3 / 4)


def test_group_success_filter():
    # group means: 0 -> 1.0, 1 -> 0.0, 2 -> 0.5
    success, ids = T([1.0, 1.0, 0.0, 0.0, 1.0, 0.0]), T([0, 0, 1, 1, 2, 2])
    too_easy, too_hard = [False, False] + [True] * 4, [True, True, False, False, True, True]
    assert adv.group_success_filter(success, ids, above=0.75).tolist() == too_easy
    assert adv.group_success_filter(success, ids, below=0.25).tolist() == too_hard
    assert adv.group_success_filter(success, ids, 0.75, 0.25).tolist() == [False] * 4 + [True] * 2
    assert adv.group_success_filter(success, ids).all()


def test_soft_overlong_penalty_dapo():
    # L_max 100, L_cache 20: free up to 80, then (80 - L) / 20, -1 at the end
    lengths = T([50, 80, 85, 90, 100])
    close(adv.soft_overlong_penalty(lengths, 100, 20), [0.0, 0.0, -0.25, -0.5, -1.0])
    with pytest.raises(ValueError, match="overlong_buffer"):
        adv.soft_overlong_penalty(lengths, 100, 0)


def test_apply_overlong():
    rewards, lengths, truncated = T([1.0, 1.0, 1.0]), T([10, 90, 100]), T([False, False, True])
    cfg = AlgoConfig(overlong="soft_penalty", overlong_buffer=20, overlong_penalty=0.5)
    # penalties 0, -0.5, -1 scaled by 0.5
    close(adv.apply_overlong(rewards, lengths, truncated, 100, cfg), [1.0, 0.75, 0.5])
    # auto buffer = 100 // 4 = 25: (75 - 90) / 25 = -0.6; a truncated one gets -1 whatever its length
    cfg = AlgoConfig(overlong="soft_penalty")
    close(adv.apply_overlong(rewards, T([10, 90, 60]), truncated, 100, cfg), [1.0, 0.4, 0.0])
    for mode in ("keep", "mask"):
        assert torch.equal(
            adv.apply_overlong(rewards, lengths, truncated, 100, AlgoConfig(overlong=mode)), rewards
        )


def test_loss_mask_for_sequences():
    rewards, ids = T([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), T([0, 0, 1, 1, 2, 2])
    truncated = T([False, False, False, True, False, False])
    keep_all = adv.loss_mask_for_sequences(rewards, ids, truncated, AlgoConfig())
    assert keep_all.all()
    drop = adv.loss_mask_for_sequences(rewards, ids, truncated, AlgoConfig(zero_variance="drop"))
    assert drop.tolist() == [False, False, True, True, False, False]
    masked = adv.loss_mask_for_sequences(rewards, ids, truncated, AlgoConfig(overlong="mask"))
    assert masked.tolist() == [True, True, True, False, True, True]
    easy = AlgoConfig(skip_group_success_above=0.9)
    assert adv.loss_mask_for_sequences(rewards, ids, truncated, easy).tolist() == [False, False] + [True] * 4


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="NaN"):
        adv.group_advantages(T([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="group_ids"):
        adv.group_advantages(T([1.0, 0.0, 1.0]), T([0, 0]))
    with pytest.raises(ValueError, match="groups, k"):
        adv.group_advantages(T([1.0, 0.0]))
    with pytest.raises(ValueError, match="scale"):
        adv.group_advantages(REWARDS, scale="std")


def test_algo_config_auto_values_follow_algo():
    grpo = AlgoConfig()
    assert (grpo.scale_rewards, grpo.loss_type, grpo.num_iterations) == ("group", "grpo", 1)
    dr = AlgoConfig(algo="dr_grpo")
    assert (dr.scale_rewards, dr.loss_type) == ("none", "dr_grpo")
    ppo = AlgoConfig(algo="ppo")
    assert (ppo.scale_rewards, ppo.loss_type, ppo.num_iterations) == ("none", "dapo", 2)
    assert AlgoConfig().epsilon_high == 0.2 and AlgoConfig(epsilon_high=0.28).epsilon_high == 0.28
    explicit = AlgoConfig(algo="grpo", scale_rewards="none", loss_type="dapo")  # explicit values win
    assert (explicit.scale_rewards, explicit.loss_type) == ("none", "dapo")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algo": "a2c"}, "algo must be one of"),
        ({"loss_type": "bnpo"}, "loss_type must be one of"),
        ({"algo": "rloo", "scale_rewards": "group"}, "scale_rewards=none"),
        ({"algo": "reinforce", "scale_rewards": "group"}, "reinforce has no groups"),
        ({"epsilon": 0.0}, "epsilon must be in"),
        ({"beta": -0.1}, "beta must be >= 0"),
        ({"is_cap": 0.5}, "is_cap must be >= 1"),
        ({"importance_sampling": "tis"}, "importance_sampling must be one of"),
        ({"skip_group_success_above": 0.2, "skip_group_success_below": 0.5}, "must be <"),
        ({"gae_lambda": 1.5}, "gae_lambda"),
        ({"num_iterations": 0}, "num_iterations"),
    ],
)
def test_algo_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AlgoConfig(**kwargs)
