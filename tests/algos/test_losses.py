"""Policy loss: aggregation modes, micro-batch exactness, clipping, importance sampling, KL, and the
chunked chosen-token log-probs. Expected numbers are worked by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from picorl.algos.config import AlgoConfig
from picorl.algos.losses import policy_loss

T = torch.tensor


def cfg(**kw) -> AlgoConfig:
    return AlgoConfig(**{"importance_sampling": "none", **kw})


def leaf(values) -> torch.Tensor:
    return T(values, dtype=torch.float32).requires_grad_(True)


# Two sequences: 3 sampled tokens and 1 sampled token (padding elsewhere), advantages +1 and -2.
MASK = T([[True, True, True, False], [False, True, False, False]])
ADV = T([1.0, -2.0])
LP = [[-0.5, -1.0, -2.0, 0.0], [0.0, -0.3, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("loss_type", "expected_loss", "expected_grad"),
    [
        # per-token loss with ratio 1 is -A: row 0 -> -1 (x3), row 1 -> +2 (x1)
        # grpo: mean over sequences of token means = (-1 + 2) / 2 = 0.5; d/dlp = -A / (|o_i| * B)
        ("grpo", 0.5, [[-1 / 6] * 3 + [0.0], [0.0, 1.0, 0.0, 0.0]]),
        # dapo: (-3 + 2) / 4 tokens = -0.25; d/dlp = -A / 4
        ("dapo", -0.25, [[-0.25] * 3 + [0.0], [0.0, 0.5, 0.0, 0.0]]),
        # dr_grpo: (-3 + 2) / (2 sequences * 4 max tokens) = -0.125; d/dlp = -A / 8
        ("dr_grpo", -0.125, [[-0.125] * 3 + [0.0], [0.0, 0.25, 0.0, 0.0]]),
    ],
)
def test_aggregation_worked_example(loss_type, expected_loss, expected_grad):
    lp = leaf(LP)
    loss, metrics = policy_loss(lp, lp.detach(), ADV, MASK, cfg(loss_type=loss_type), max_completion_length=4)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-7)
    assert metrics["loss/policy"] == pytest.approx(expected_loss, abs=1e-7)
    loss.backward()
    torch.testing.assert_close(lp.grad, T(expected_grad), atol=1e-7, rtol=0)
    assert metrics["ratio/mean"] == 1.0 and metrics["clip/fraction"] == 0.0 and metrics["approx_kl"] == 0.0


def test_single_epoch_gradient_is_the_reinforce_gradient():
    # With old = lp.detach() the ratio is 1 and the loss gradient must equal that of the plain
    # REINFORCE surrogate -(1 / N_tok) sum A_i log pi(token), through a real softmax policy.
    torch.manual_seed(0)
    theta = torch.randn(3, 5, 7, requires_grad=True)
    tokens = torch.randint(0, 7, (3, 5))
    mask = torch.rand(3, 5) > 0.3
    advantages = T([0.7, -1.3, 0.2])
    lp = torch.log_softmax(theta, -1).gather(-1, tokens[..., None])[..., 0]
    loss, _ = policy_loss(lp, lp.detach(), advantages, mask, cfg(loss_type="dapo"))
    (grad,) = torch.autograd.grad(loss, theta)
    lp2 = torch.log_softmax(theta, -1).gather(-1, tokens[..., None])[..., 0]
    reinforce = -(advantages[:, None] * lp2 * mask).sum() / mask.sum()
    (expected,) = torch.autograd.grad(reinforce, theta)
    torch.testing.assert_close(grad, expected, atol=1e-7, rtol=1e-6)


def _random_batch(seed: int, b: int = 6, t: int = 5):
    g = torch.Generator().manual_seed(seed)
    lengths = T([5, 2, 4, 1, 3, 5])[:b]
    mask = torch.arange(t)[None, :] < lengths[:, None]
    lp = -torch.rand(b, t, generator=g) * 2
    old = lp + 0.3 * torch.randn(b, t, generator=g)  # ratios far enough from 1 that some clip
    engine = old + 0.4 * torch.randn(b, t, generator=g)  # some weights hit the cap
    ref = lp + 0.5 * torch.randn(b, t, generator=g)
    advantages = torch.randn(b, generator=g)
    return lp, old, engine, ref, advantages, mask


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("importance_sampling", ["token", "sequence"])
def test_micro_batch_losses_add_up_to_the_batch_loss(loss_type, importance_sampling):
    lp, old, engine, ref, advantages, mask = _random_batch(1)
    c = AlgoConfig(loss_type=loss_type, importance_sampling=importance_sampling, is_cap=1.5, beta=0.05)
    totals = {"total_sequences": 6, "total_tokens": int(mask.sum()), "max_completion_length": 5}

    whole_lp = lp.clone().requires_grad_(True)
    whole, metrics = policy_loss(whole_lp, old, advantages, mask, c, engine, ref, **totals)
    whole.backward()
    assert 0 < metrics["clip/fraction"] < 1 and metrics["is/capped_fraction"] > 0  # the paths are exercised

    parts_lp = lp.clone().requires_grad_(True)
    summed, naive = 0.0, 0.0
    for s in (slice(0, 2), slice(2, 3), slice(3, 6)):
        part, _ = policy_loss(parts_lp[s], old[s], advantages[s], mask[s], c, engine[s], ref[s], **totals)
        part.backward()
        summed = summed + part.item()
        # each micro-batch normalised on its own (no totals passed): not the batch loss
        alone, _ = policy_loss(
            lp[s], old[s], advantages[s], mask[s], c, engine[s], ref[s], max_completion_length=5
        )
        naive = naive + alone.item()
    assert summed == pytest.approx(whole.item(), abs=1e-6)
    torch.testing.assert_close(parts_lp.grad, whole_lp.grad, atol=1e-7, rtol=1e-6)
    assert abs(naive - whole.item()) > 1e-3  # the check above could fail: local normalisers differ


def test_clipping_zeroes_the_gradient_outside_the_trust_region():
    # old = 0 everywhere; ratios e^lp. A per token (advantages given as [B, T]).
    r_high, r_low = math.exp(0.5), 0.7  # 1.6487 > 1.2 and 0.7 < 0.8
    lp = leaf([[0.5, math.log(r_low), 0.0, 0.5]])
    adv = T([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    loss, metrics = policy_loss(lp, torch.zeros(1, 4), adv, mask, cfg(loss_type="dapo"))
    loss.backward()
    # token 0: ratio 1.6487, A > 0 -> clipped at 1.2, no gradient
    # token 1: ratio 0.7, A < 0 -> clipped at 0.8, no gradient
    # token 2: ratio 1, gradient -A / 4 = -0.25
    # token 3: ratio 1.6487, A < 0: min picks the unclipped -1.6487, gradient -A * ratio / 4 = 0.4122
    torch.testing.assert_close(lp.grad, T([[0.0, 0.0, -0.25, r_high / 4]]), atol=1e-6, rtol=0)
    # loss = -(1.2 - 0.8 + 1 - 1.6487) / 4 = 0.0621803
    assert loss.item() == pytest.approx(-(1.2 - 0.8 + 1 - r_high) / 4, abs=1e-6)
    assert metrics["clip/high_fraction"] == 0.25 and metrics["clip/low_fraction"] == 0.25
    assert metrics["clip/fraction"] == 0.5
    assert metrics["ratio/max"] == pytest.approx(r_high) and metrics["ratio/min"] == pytest.approx(r_low)


def test_clip_higher_lets_a_positive_token_rise_further():
    # ratio 1.25 with A > 0: clipped with eps_high = 0.2, free with DAPO's 0.28 (gradient -1.25)
    for eps_high, grad in ((0.2, 0.0), (0.28, -1.25)):
        lp = leaf([[math.log(1.25)]])
        loss, _ = policy_loss(lp, torch.zeros(1, 1), T([1.0]), T([[True]]), cfg(epsilon_high=eps_high))
        loss.backward()
        assert lp.grad.item() == pytest.approx(grad, abs=1e-6)


def test_importance_weights_are_one_when_engine_and_trainer_agree():
    lp, _, _, _, advantages, mask = _random_batch(2)
    lp = lp.requires_grad_(True)
    plain, _ = policy_loss(lp, lp.detach(), advantages, mask, cfg())
    loss, m = policy_loss(lp, lp.detach(), advantages, mask, AlgoConfig(), engine_logprobs=lp.detach())
    assert loss.item() == plain.item()
    assert m["is/weight_mean"] == 1.0 and m["is/capped_fraction"] == 0.0
    assert m["is/log_ratio_min"] == m["is/log_ratio_mean"] == m["is/log_ratio_max"] == 0.0


def test_token_importance_weights_are_truncated_at_the_cap():
    # engine log-probs lower by [0, log 1.5, log 3]: raw weights [1, 1.5, 3], cap 2 -> [1, 1.5, 2]
    lp = leaf([[-1.0, -2.0, -0.5]])
    engine = lp.detach() - T([[0.0, math.log(1.5), math.log(3.0)]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, m = policy_loss(
        lp, lp.detach(), T([1.0]), mask, AlgoConfig(loss_type="dapo"), engine_logprobs=engine
    )
    loss.backward()
    assert loss.item() == pytest.approx(-(1 + 1.5 + 2) / 3, abs=1e-6)  # -1.5
    # gradient -w / 3 per token: each token's gradient is scaled by its (truncated) weight
    torch.testing.assert_close(lp.grad, T([[-1 / 3, -0.5, -2 / 3]]), atol=1e-6, rtol=0)
    assert m["is/capped_fraction"] == pytest.approx(1 / 3)
    assert m["is/weight_mean"] == pytest.approx(1.5, abs=1e-6)
    assert m["is/log_ratio_min"] == 0.0
    assert m["is/log_ratio_max"] == pytest.approx(math.log(3), abs=1e-6)
    assert m["is/log_ratio_mean"] == pytest.approx(0.5013591, abs=1e-6)  # (log 1.5 + log 3) / 3
    # a higher cap leaves the weight of 3 alone: -(1 + 1.5 + 3) / 3
    loss4, m4 = policy_loss(lp, lp.detach(), T([1.0]), mask, AlgoConfig(loss_type="dapo", is_cap=4.0), engine)
    assert loss4.item() == pytest.approx(-5.5 / 3, abs=1e-6) and m4["is/capped_fraction"] == 0.0


def test_sequence_importance_weights_use_the_summed_log_ratio():
    # row 0: two tokens at log 1.2 each -> w = 1.44; row 1: two at log 1.5 -> 2.25, capped to 2
    lp = leaf([[-1.0, -1.0], [-2.0, -2.0]])
    engine = lp.detach() - T([[math.log(1.2)] * 2, [math.log(1.5)] * 2])
    mask = torch.ones(2, 2, dtype=torch.bool)
    c = AlgoConfig(loss_type="dapo", importance_sampling="sequence")
    loss, m = policy_loss(lp, lp.detach(), T([1.0, 1.0]), mask, c, engine_logprobs=engine)
    assert loss.item() == pytest.approx(-(2 * 1.44 + 2 * 2.0) / 4, abs=1e-6)  # -1.72
    assert m["is/capped_fraction"] == 0.5 and m["is/weight_mean"] == pytest.approx(1.72, abs=1e-6)


def test_missing_engine_or_reference_logprobs_are_clear_errors():
    lp, mask = torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="engine_logprobs"):
        policy_loss(lp, lp, T([1.0]), mask, AlgoConfig())
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, lp, T([1.0]), mask, cfg(beta=0.1))
    with pytest.raises(ValueError, match="max_completion_length"):
        policy_loss(lp, lp, T([1.0]), mask, cfg(loss_type="dr_grpo"))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        policy_loss(torch.zeros(2), torch.zeros(2), T([1.0]), mask, cfg())


def test_kl_is_zero_when_reference_equals_policy_and_positive_otherwise():
    lp = leaf([[-1.0, -2.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    base, _ = policy_loss(lp, lp.detach(), T([0.5]), mask, cfg(loss_type="dapo"))
    same, m = policy_loss(
        lp, lp.detach(), T([0.5]), mask, cfg(loss_type="dapo", beta=0.1), ref_logprobs=lp.detach()
    )
    assert m["kl/mean"] == 0.0 and same.item() == base.item()
    # ref - lp = [0.5, -0.5]: k3 = e^0.5 - 1.5 = 0.1487213 and e^-0.5 - 0.5 = 0.1065307
    ref = lp.detach() + T([[0.5, -0.5]])
    loss, m = policy_loss(lp, lp.detach(), T([0.0]), mask, cfg(loss_type="dapo", beta=0.1), ref_logprobs=ref)
    assert m["kl/mean"] == pytest.approx((0.1487213 + 0.1065307) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.1 * (0.1487213 + 0.1065307) / 2, abs=1e-7)
    loss.backward()
    # d k3 / d lp = 1 - e^(ref - lp): -0.6487213 and 0.3934693, times beta / 2 tokens
    torch.testing.assert_close(lp.grad, T([[-0.6487213, 0.3934693]]) * 0.05, atol=1e-7, rtol=0)


def test_sequence_lengths_count_sampled_tokens_that_the_mask_does_not_train():
    # one row of 4 sampled tokens of which only the third is trained (credit = divergence): its loss
    # -A * ratio = -(-2) * 1 = 2 is divided by the 4 tokens sampled (grpo) or the batch's 4 (dapo),
    # not by the 1 trained, so the token weighs what it would if its neighbours were trained too
    mask = T([[False, False, True, False]])
    for loss_type in ("grpo", "dapo"):
        lp = leaf([[-0.1, -0.2, -0.5, -0.3]])
        loss, metrics = policy_loss(
            lp, lp.detach(), T([-2.0]), mask, cfg(loss_type=loss_type), sequence_lengths=T([4])
        )
        assert loss.item() == pytest.approx(0.5, abs=1e-7), loss_type
        assert metrics["loss/policy"] == pytest.approx(0.5, abs=1e-7)
        loss.backward()
        torch.testing.assert_close(lp.grad, T([[0.0, 0.0, 0.5, 0.0]]), atol=1e-7, rtol=0)
    lp = leaf([[-0.1, -0.2, -0.5, -0.3]])
    unnormalised, _ = policy_loss(lp, lp.detach(), T([-2.0]), mask, cfg(loss_type="grpo"))
    assert unnormalised.item() == pytest.approx(2.0, abs=1e-7)  # without them: the trained token alone
