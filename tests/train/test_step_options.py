"""The train-step options of ``[train]`` compute the same loss and gradients as the default path:
micro-batches by tokens (any split, sorted or not, gives the batch's gradient: the normalisers count
the whole batch), bf16 autocast (within bf16 rounding), a compiled decoder (within fp32 rounding). Another
SDPA kernel first: the order holds for the phase alone (a CPU runs torch's fixed order, so the kernel
that runs is checked on a GPU, ``test_gpu_training.py``)."""

from __future__ import annotations

import random

import pytest
import torch
from torch.nn.attention import SDPBackend

from picorl.config import ModelConfig, build_config
from picorl.models.loading import unwrap_hf_model
from picorl.rollout.episodes import Episode
from picorl.train.batch import _pack, make_micro_batches
from picorl.train.policy import make_policy
from picorl.train.step_options import TokenBudget, micro_batch_tokens, train_phase
from picorl.train.update import UpdateContext, optimize
from tests.conftest import tiny_llama

CPU = torch.device("cpu")


class GradientRecorder:
    """Stands in for the optimizer: keeps the gradients ``optimize`` would step with."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.param_groups = [{"params": params}]
        self.grads: list[torch.Tensor] = []

    def step(self) -> None:
        self.grads = [p.grad.detach().clone() for p in self.param_groups[0]["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.param_groups[0]["params"]:
            p.grad = None


class NoSchedule:
    def step(self) -> None:
        pass


def episodes(count: int = 10, seed: int = 0) -> list[Episode]:
    """Episodes of varied lengths (so splits pad differently), engine log-probs near the policy's."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        prompt = [rng.randrange(1, 128) for _ in range(rng.randint(3, 8))]
        completion = [rng.randrange(1, 128) for _ in range(rng.randint(2, 20))]
        out.append(Episode(
            group=i // 4, task_seed=i, prompt_ids=prompt, completion_ids=completion,
            action_mask=[True] * len(completion), engine_logprobs=[-4.8] * len(completion),
        ))  # fmt: skip
    return out


def context(checkpointing: bool = False, **train) -> UpdateContext:
    model = make_policy(tiny_llama(), ModelConfig(lora_rank=4, gradient_checkpointing=checkpointing))
    with torch.no_grad():  # B = 0 at init would make every adapter gradient but B's vanish
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    config = build_config({"train": {"max_grad_norm": 0.0, **train}, "rollout": {"max_tokens": 20}})
    params = [p for p in model.parameters() if p.requires_grad]
    return UpdateContext(
        config=config, model=model, tokenizer=None, engine=None, make_env=None,
        optimizer=GradientRecorder(params), lr_scheduler=NoSchedule(), device=CPU,
    )  # fmt: skip


def gradients(ctx: UpdateContext, micro_batch_size: int = 2, max_tokens: int | None = None, order=None):
    eps = episodes()
    advantages = torch.linspace(-1.5, 1.5, len(eps))
    if order is None:
        batches = make_micro_batches(eps, advantages, micro_batch_size, 0, CPU, max_tokens=max_tokens)
    else:  # one micro-batch in the given order, not sorted by length
        batches = [_pack([eps[i] for i in order], order, advantages[order], 0, CPU)]
    with train_phase(ctx.model, ctx.config.train, ctx.compiled_layers):  # as rl_update runs it
        metrics = optimize(ctx, batches, max_completion_length=20)
    return ctx.optimizer.grads, metrics


def assert_close(a, b, rtol: float, atol: float) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_any_split_and_order_gives_the_whole_batch_gradient(loss_type):
    for kwargs in (
        {"micro_batch_size": 2},
        {"micro_batch_size": 3},
        {"max_tokens": 40},
        {"max_tokens": 10**6},
    ):
        ctx = context()
        ctx.config.algo.loss_type = loss_type
        ref_ctx = context()
        ref_ctx.config.algo.loss_type = loss_type
        order = [3, 7, 0, 9, 1, 5, 2, 8, 6, 4]
        reference, _ = gradients(ref_ctx, order=order)  # one unsorted micro-batch: no split at all
        assert sum(g.abs().sum() for g in reference) > 0
        grads, _ = gradients(ctx, **kwargs)
        assert_close(grads, reference, rtol=1e-5, atol=1e-7)


def test_micro_batches_by_tokens_cover_the_batch_within_the_budget():
    eps = episodes(12)
    batches = make_micro_batches(eps, torch.zeros(12), 2, 0, CPU, max_tokens=60)
    assert sorted(i for b in batches for i in b.index) == list(range(12))
    longest = max(len(e.prompt_ids) + len(e.completion_ids) for e in eps)
    for b in batches:
        assert b.input_ids.numel() <= max(60, longest)
    assert len(make_micro_batches(eps, torch.zeros(12), 2, 0, CPU, max_tokens=10**6)) == 1


def test_token_budget_off_and_cpu_fall_back_to_rows():
    config = build_config({"train": {"micro_batch_tokens": 0}}).train
    assert micro_batch_tokens(config, TokenBudget(), CPU) is None  # no GPU memory to size from
    config.micro_batch_tokens = 512
    assert micro_batch_tokens(config, TokenBudget(), CPU) == 512
    config.micro_batch_tokens = None
    assert micro_batch_tokens(config, TokenBudget(), CPU) is None
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        build_config({"train": {"micro_batch_tokens": -1}})


@pytest.mark.parametrize("checkpointing", [False, True])
def test_autocast_matches_fp32_within_bf16_rounding(checkpointing):
    reference, m_ref = gradients(context(checkpointing))
    ctx = context(checkpointing, train_autocast=True)
    grads, m = gradients(ctx)
    # the engine runs the adapters eagerly, outside autocast: PEFT's input cast is back on
    assert all(getattr(mod, "cast_input_dtype_enabled", True) for mod in ctx.model.modules())
    for x, y in zip(grads, reference):  # bf16 keeps ~3 significant digits: compare directions and sizes
        assert torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0) > 0.99
        assert (x.norm() / y.norm() - 1).abs() < 0.05
    for key in m_ref:
        if key.startswith("loss"):
            assert abs(m[key] - m_ref[key]) < 0.02 * max(1.0, abs(m_ref[key])), key


@pytest.mark.slow
@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiled_layers_match_eager_and_are_swapped_out_after(checkpointing):
    reference, _ = gradients(context(checkpointing))
    ctx = context(checkpointing, compile_train=True)
    grads, _ = gradients(ctx)
    layers = unwrap_hf_model(ctx.model).model.layers
    assert len(ctx.compiled_layers.calls) == len(layers)  # compiled for the phase...
    assert all(layer._compiled_call_impl is None for layer in layers)  # ...and eager again after it
    assert_close(grads, reference, rtol=1e-4, atol=1e-6)


def test_train_attention_orders_the_kernels_for_the_phase_only():
    before = torch._C._get_sdp_priority_order()
    reference, _ = gradients(context())
    ctx = context(train_attention="math")
    grads, _ = gradients(ctx)
    assert torch._C._get_sdp_priority_order() == before  # the order is the phase's alone
    with train_phase(ctx.model, ctx.config.train, ctx.compiled_layers):
        inside = torch._C._get_sdp_priority_order()
    assert SDPBackend(inside[0]) == SDPBackend.MATH
    assert sorted(inside) == sorted(before)  # the others stay as fallbacks
    assert_close(grads, reference, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="train_attention"):
        build_config({"train": {"train_attention": "fa3"}})
