import math

import pytest
import torch

from picorl.config import ModelConfig
from picorl.envs import make_env
from picorl.models import load_model_and_tokenizer
from picorl.train import sft
from picorl.train.guard import FiniteStepGuard, NonFiniteGradients
from picorl.train.policy import make_policy


def _one_weight_sgd():
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.full((3,), 0.5)
    return weight, torch.optim.SGD([weight], lr=1.0)


def test_a_finite_norm_steps_and_a_non_finite_one_leaves_the_weights():
    weight, optimizer = _one_weight_sgd()
    guard = FiniteStepGuard("SFT", "Lower --sft-lr")
    assert guard.step(optimizer, float("inf"), "SFT step 1") is False
    assert guard.step(optimizer, float("nan"), "SFT step 2") is False
    assert torch.equal(weight.detach(), torch.ones(3)) and guard.skipped == 2
    assert guard.step(optimizer, 0.87, "SFT step 3") is True
    assert torch.allclose(weight.detach(), torch.full((3,), 0.5))
    # a finite step resets the run of skips: two more are still tolerated
    assert guard.step(optimizer, float("nan"), "SFT step 4") is False
    assert guard.step(optimizer, float("nan"), "SFT step 5") is False
    assert guard.skipped == 4


def test_skips_in_a_row_stop_with_the_fix_in_the_message():
    weight, optimizer = _one_weight_sgd()
    guard = FiniteStepGuard("SFT", "Lower --sft-lr (now 0.001)", limit=3)
    guard.step(optimizer, float("nan"), "SFT step 33")
    guard.step(optimizer, float("nan"), "SFT step 34")
    with pytest.raises(NonFiniteGradients, match=r"SFT diverged.*SFT step 35.*Lower --sft-lr \(now 0.001\)"):
        guard.step(optimizer, float("nan"), "SFT step 35")
    assert torch.equal(weight.detach(), torch.ones(3))
    assert issubclass(NonFiniteGradients, ValueError)  # the CLI reports it as an error (exit 2)


def _sft_with_nan_losses(monkeypatch, nan_calls: set[int], steps: int):
    """run_sft on tiny-qwen3 whose log-probs are NaN on the listed forward calls (0-based)."""
    real = sft.chosen_token_logprobs
    calls = iter(range(10**6))

    def logprobs(*args, **kwargs):
        out = real(*args, **kwargs)
        return out * float("nan") if next(calls) in nan_calls else out

    monkeypatch.setattr(sft, "chosen_token_logprobs", logprobs)
    model, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    model = make_policy(model, ModelConfig(lora_rank=4, gradient_checkpointing=False))
    env = make_env("letter_counting", difficulty=[1])
    stream = sft.DemonstrationStream(
        lambda tasks: sft.demonstration_tokens(tokenizer, [env.demonstration(seed) for _, seed in tasks]),
        [1], steps=steps, batch_size=2, curriculum=False,
    )  # fmt: skip
    rows, snapshots = [], []

    def log(step, metrics):
        rows.append(metrics)
        snapshots.append([p.detach().clone() for p in model.parameters() if p.requires_grad])

    initial = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    return model, stream, rows, snapshots, initial, log, tokenizer


def test_sft_skips_a_nan_step_and_goes_on(monkeypatch):
    # one forward per step (the default micro-batch holds the whole batch): call 1 is step 2
    model, stream, rows, snapshots, initial, log, tokenizer = _sft_with_nan_losses(monkeypatch, {1}, steps=4)
    sft.run_sft(model, tokenizer, stream, lr=1e-2, device="cpu", log=log)
    assert [r["sft/skipped_steps"] for r in rows] == [0, 1, 1, 1]
    assert math.isnan(rows[1]["sft/grad_norm"]) and math.isfinite(rows[2]["sft/grad_norm"])
    assert not all(torch.equal(a, b) for a, b in zip(initial, snapshots[0]))  # step 1 trained
    assert all(torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))  # step 2 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))  # step 3 trained again
    assert all(torch.isfinite(p).all() for p in snapshots[-1])


def test_sft_that_keeps_diverging_stops_with_good_weights(monkeypatch):
    model, stream, rows, snapshots, initial, log, tokenizer = _sft_with_nan_losses(
        monkeypatch, set(range(1, 100)), steps=10
    )
    with pytest.raises(NonFiniteGradients, match=r"SFT step 4.*--sft-lr \(now 0.01\)"):
        sft.run_sft(model, tokenizer, stream, lr=1e-2, device="cpu", log=log)
    assert len(rows) == 3  # steps 1-3 logged; step 4 raised before its row
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(snapshots[0], after))  # as step 1 left them


def test_rl_skips_an_optimizer_step_on_a_nan_loss(monkeypatch):
    from picorl.algos import losses
    from tests.train.test_step_options import context, gradients

    ctx = context()
    grads, metrics = gradients(ctx)
    assert grads and metrics["train/skipped_steps"] == 0  # the recorder stepped with real gradients

    real = losses.policy_loss

    def nan_loss(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        return loss * float("nan"), m

    monkeypatch.setattr(losses, "policy_loss", nan_loss)
    ctx = context()
    grads, metrics = gradients(ctx)
    assert grads == [] and metrics["train/skipped_steps"] == 1  # optimizer.step() was never called
    assert math.isnan(metrics["grad/norm"])
