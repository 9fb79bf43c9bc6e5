"""PPO critic: GAE, the clipped value loss, explained variance, and a value head that trains."""

from __future__ import annotations

import pytest
import torch

from picorl.algos.value_head import (
    ValueHead,
    explained_variance,
    gae,
    outcome_rewards,
    value_head_param_group,
    value_loss,
)

T = torch.tensor


def test_outcome_reward_sits_on_the_last_sampled_token():
    mask = T([[False, True, True, False], [True, False, True, True], [False] * 4])
    out = outcome_rewards(T([0.5, 1.0, 0.7]), mask)
    torch.testing.assert_close(out, T([[0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0] * 4]))


def test_gae_with_gamma_and_lambda_one_is_returns_minus_values():
    # outcome reward: A_t = R - V_t and returns R on every sampled token
    mask = T([[True, True, True, False], [True, True, False, False]])
    values = T([[0.1, 0.4, 0.9, 7.0], [0.5, -0.2, 3.0, 3.0]])
    rewards = outcome_rewards(T([1.0, 0.0]), mask)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(advantages, T([[0.9, 0.6, 0.1, 0.0], [-0.5, 0.2, 0.0, 0.0]]))
    torch.testing.assert_close(returns, T([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    # with rewards on several tokens: returns are reward-to-go, advantages returns - values
    dense = T([[0.5, 0.0, 1.0, 0.0], [0.25, 0.25, 0.0, 0.0]])
    advantages, returns = gae(dense, values, mask, 1.0, 1.0)
    torch.testing.assert_close(returns, T([[1.5, 1.0, 1.0, 0.0], [0.5, 0.25, 0.0, 0.0]]))
    torch.testing.assert_close(advantages, torch.where(mask, returns - values, 0.0))


def test_gae_worked_example_with_discount():
    # gamma 0.9, lambda 0.5, V = [0.5, 0.4, 0.2], reward 1 on the last token:
    # delta_2 = 1 - 0.2 = 0.8                       A_2 = 0.8
    # delta_1 = 0.9 * 0.2 - 0.4 = -0.22             A_1 = -0.22 + 0.45 * 0.8 = 0.14
    # delta_0 = 0.9 * 0.4 - 0.5 = -0.14             A_0 = -0.14 + 0.45 * 0.14 = -0.077
    # returns = A + V = [0.423, 0.54, 1.0]
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = gae(T([[0.0, 0.0, 1.0]]), T([[0.5, 0.4, 0.2]]), mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(advantages, T([[-0.077, 0.14, 0.8]]))
    torch.testing.assert_close(returns, T([[0.423, 0.54, 1.0]]))


def test_gae_skips_tokens_off_the_mask():
    # a multi-turn row: sampled, sampled, env, env, sampled, pad -> same as the 3 sampled tokens alone
    mask = T([[True, True, False, False, True, False]])
    values = T([[0.5, 0.4, 9.0, 9.0, 0.2, 9.0]])
    rewards = T([[0.0, 0.0, 5.0, 5.0, 1.0, 5.0]])  # rewards off the mask are ignored
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(advantages, T([[-0.077, 0.14, 0.0, 0.0, 0.8, 0.0]]))
    torch.testing.assert_close(returns, T([[0.423, 0.54, 0.0, 0.0, 1.0, 0.0]]))


def test_clipped_value_loss_worked_example():
    # V = 0.5, V_old = 0.2, R = 1, clip 0.2: unclipped (0.5 - 1)^2 = 0.25, clipped V 0.4 -> 0.36;
    # loss 0.5 * max = 0.18, and the max is the clipped branch, flat in V -> zero gradient
    values = T([[0.5]], requires_grad=True)
    mask = T([[True]])
    loss = value_loss(values, T([[0.2]]), T([[1.0]]), mask, clip=0.2)
    assert loss.item() == pytest.approx(0.18, abs=1e-7)
    loss.backward()
    assert values.grad.item() == 0.0
    # no clipping: 0.5 * 0.25 = 0.125, gradient V - R = -0.5
    values.grad = None
    loss = value_loss(values, T([[0.2]]), T([[1.0]]), mask, clip=None)
    assert loss.item() == pytest.approx(0.125, abs=1e-7)
    loss.backward()
    assert values.grad.item() == pytest.approx(-0.5)


def test_value_loss_micro_batches_add_up():
    g = torch.Generator().manual_seed(0)
    values, old, returns = (torch.randn(5, 4, generator=g) for _ in range(3))
    mask = torch.rand(5, 4, generator=g) > 0.3
    whole = value_loss(values, old, returns, mask, clip=0.3)
    n = int(mask.sum())
    parts = sum(
        value_loss(values[s], old[s], returns[s], mask[s], 0.3, total_tokens=n)
        for s in (slice(0, 2), slice(2, 5))
    )
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)


def test_explained_variance():
    mask = T([[True, True, True, False]])
    returns = T([[1.0, 2.0, 4.0, 0.0]])
    assert explained_variance(returns.clone(), returns, mask).item() == pytest.approx(1.0)
    # predicting the mean (7/3) everywhere explains nothing
    assert explained_variance(torch.full((1, 4), 7 / 3), returns, mask).item() == pytest.approx(0.0, abs=1e-6)
    # residuals [1, 1, 1] have no variance: a constant offset still explains all the variance
    assert explained_variance(returns - 1, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 4), torch.ones(1, 4), mask).item() == 0.0  # nothing to explain


def test_value_head_trains_on_a_fixed_batch():
    torch.manual_seed(0)
    head = ValueHead(hidden_size=16)
    hidden = torch.randn(4, 6, 16, dtype=torch.bfloat16)  # any model dtype in, fp32 values out
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    returns = torch.where(mask, torch.tensor([1.0, 0.0, 0.6, 0.2])[:, None].expand(4, 6), 0.0)
    values = head(hidden)
    assert values.shape == (4, 6) and values.dtype == torch.float32
    assert torch.equal(values, torch.zeros(4, 6))  # zero-initialised

    # built BEFORE the optimizer and handed to it through its parameter group
    optimizer = torch.optim.AdamW([value_head_param_group(head, lr=0.05)])
    assert optimizer.param_groups[0]["weight_decay"] == 0.0
    losses = []
    for _ in range(20):
        old_values = head(hidden).detach()  # each step as a fresh PPO epoch: clip relative to now
        loss = value_loss(head(hidden), old_values, returns, mask, clip=0.2)
        optimizer.zero_grad()
        loss.backward()
        assert head.linear.weight.grad.abs().sum() > 0  # the head receives gradient
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    ev = explained_variance(head(hidden).detach(), returns, mask).item()
    assert ev > 0.5


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="must all be"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="hidden_size"):
        ValueHead(0)
