"""The engine reads the trainer's own tensors: no copies, no sync, no drift, flags left alone."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.overrides import TorchFunctionMode
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from picorl.engine import EngineConfig, LLMEngine
from picorl.engine.types import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0)
CONFIG = dict(block_size=4, num_blocks=128)


@pytest.fixture
def lora_model(tiny_model):
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(tiny_model("qwen3"), config)


class ReadRecorder(TorchFunctionMode):
    """Every tensor a torch computation reads during the block (calls that return no tensor, such as
    ``data_ptr`` or ``dtype``, read no values and are not counted), and the storages they produce."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[torch.Tensor] = []
        self.produced: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        outputs = [t for t in torch.utils._pytree.tree_flatten(result)[0] if isinstance(t, torch.Tensor)]
        if outputs:
            flat, _ = torch.utils._pytree.tree_flatten((args, kwargs))
            self.read += [t for t in flat if isinstance(t, torch.Tensor)]
        for t in outputs:
            if t.device.type != "meta":
                self.produced.add(t.untyped_storage().data_ptr())
        return result


def test_every_weight_read_is_the_trainers_tensor(lora_model, random_prompts) -> None:
    model = lora_model
    engine = LLMEngine(model, None, EngineConfig(**CONFIG))
    engine.generate(random_prompts([3]), GREEDY)  # KV cache and fused projections set up first
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    owned.add(engine.kv.kv.untyped_storage().data_ptr())
    with ReadRecorder() as rec:
        engine.generate(random_prompts([5, 9]), GREEDY, n=2)
    read_params = {id(t) for t in rec.read if isinstance(t, torch.nn.Parameter)}
    read_storages = {t.untyped_storage().data_ptr() for t in rec.read}
    unread = [
        name
        for name, p in model.named_parameters()
        if id(p) not in read_params and p.untyped_storage().data_ptr() not in read_storages
    ]
    assert not unread, (
        "every parameter, LoRA A/B and base weights alike, is read in place or in its fused buffer"
    )
    fused = [f for layer in engine.runner.fusion for f in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    assert all(f is not None for f in fused), "plain LoRA layers run their base weights as one GEMM"
    o_proj = model.base_model.model.model.layers[0].self_attn.o_proj
    assert fused[1].weight.data_ptr() == o_proj.base_layer.weight.data_ptr(), (
        "a group of one keeps its weight"
    )
    attn = model.base_model.model.model.layers[0].self_attn
    assert (
        attn.k_proj.base_layer.weight.untyped_storage().data_ptr()
        == fused[0].weight.untyped_storage().data_ptr()
    )
    foreign = [
        tuple(t.shape)
        for t in rec.read
        if t.numel() and t.untyped_storage().data_ptr() not in owned | rec.produced
    ]
    assert not foreign, f"the engine read tensors made outside the call that are not the model's: {foreign}"


def test_an_optimizer_step_shows_in_the_next_rollout_without_sync(
    lora_model, random_prompts, hf_greedy
) -> None:
    model = lora_model
    engine = LLMEngine(model, None, EngineConfig(**CONFIG))
    prompts = random_prompts([6, 10])
    before = engine.generate(prompts, GREEDY)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=2.0)
    ids = torch.tensor([prompts[0] + before[0][0].token_ids])
    model(ids, labels=ids).loss.neg().backward()  # push away from what it generated
    optimizer.step()
    after = engine.generate(prompts, GREEDY)
    assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]
    for prompt, group in zip(prompts, after):
        assert group[0].token_ids == hf_greedy(model, prompt, 12)


def test_full_fine_tuning_through_fused_projections_shows_in_the_next_rollout(
    tiny_model, random_prompts, hf_greedy
) -> None:
    """No LoRA: the optimizer updates q/k/v and gate/up in place, inside the buffers the engine reads."""
    model = tiny_model("qwen2")  # q/k/v biases live in a fused buffer too
    engine = LLMEngine(model, None, EngineConfig(**CONFIG))
    prompts = random_prompts([6, 10])
    before = engine.generate(prompts, GREEDY)
    fused = engine.runner.fusion[0].qkv
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-2)  # created after fusion: same Parameters
    ids = torch.tensor([prompts[0] + before[0][0].token_ids])
    model.train()
    model(ids, labels=ids).loss.neg().backward()
    optimizer.step()
    model.eval()
    after = engine.generate(prompts, GREEDY)
    assert engine.runner.fusion[0].qkv is fused, "in-place updates keep the buffers: nothing re-fused"
    assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]
    for prompt, group in zip(prompts, after):
        assert group[0].token_ids == hf_greedy(model, prompt, 12)


def test_a_weight_given_new_storage_is_fused_again(tiny_model, random_prompts, hf_greedy) -> None:
    model = tiny_model("qwen3")
    engine = LLMEngine(model, None, EngineConfig(**CONFIG))
    prompts = random_prompts([6, 10])
    before = engine.generate(prompts, GREEDY)
    k_proj = model.model.layers[1].self_attn.k_proj
    with torch.no_grad():
        k_proj.weight.data = torch.randn_like(k_proj.weight) * 0.5  # e.g. a safe merge or a reload
    after = engine.generate(prompts, GREEDY)
    fused = engine.runner.fusion[1].qkv
    assert k_proj.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr()
    assert [g[0].token_ids for g in after] != [g[0].token_ids for g in before]
    for prompt, group in zip(prompts, after):
        assert group[0].token_ids == hf_greedy(model, prompt, 12)


@pytest.mark.parametrize("cycles", [100, pytest.param(1000, marks=pytest.mark.slow)])
def test_base_weights_stay_bit_identical_over_rollout_step_cycles(cycles, lora_model, random_prompts) -> None:
    model = lora_model
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    engine = LLMEngine(model, None, EngineConfig(**CONFIG))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    prompt = random_prompts([4])
    for step in range(cycles):
        out = engine.generate(prompt, SamplingParams(max_tokens=2, temperature=1.0, seed=step))
        ids = torch.tensor([prompt[0] + out[0][0].token_ids])
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, p in model.named_parameters():
        if name in base:
            assert torch.equal(p, base[name]), f"{name} drifted"


def test_training_flags_and_gradient_checkpointing_survive_generate(
    lora_model, random_prompts, hf_greedy
) -> None:
    model = lora_model
    model.train()
    model.get_base_model().gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    model.enable_input_require_grads()
    model.get_base_model().model.layers[1].mlp.eval()  # a flag the trainer set on purpose
    flags = {name: m.training for name, m in model.named_modules()}
    engine = LLMEngine(model, None, EngineConfig(**CONFIG))
    prompts = random_prompts([7])
    out = engine.generate(prompts, GREEDY)
    assert {name: m.training for name, m in model.named_modules()} == flags
    ids = torch.tensor([prompts[0] + out[0][0].token_ids])
    model(ids, labels=ids).loss.backward()  # training still works after a rollout
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    assert out[0][0].token_ids == hf_greedy(model, prompts[0], 12)


def test_unsupported_architectures_are_named_in_the_error() -> None:
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=64))
    with pytest.raises(ValueError, match="LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"):
        LLMEngine(gpt2)
    sliding = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, use_sliding_window=True, sliding_window=8, max_window_layers=0,
        )
    )  # fmt: skip
    with pytest.raises(ValueError, match="sliding-window"):
        LLMEngine(sliding)


def test_sleep_and_wake_give_identical_results(tiny_model, random_prompts) -> None:
    model = tiny_model("llama")
    engine = LLMEngine(model, None, EngineConfig(**CONFIG))
    prompts = random_prompts([5, 12])
    params = SamplingParams(max_tokens=10, temperature=0.8, seed=1)
    first = engine.generate(prompts, params, n=2)
    engine.sleep()
    assert engine.kv is None and engine.storage.buffer is None, "sleep drops every reference to the cache"
    engine.wake_up()
    assert engine.generate(prompts, params, n=2) == first
    engine.sleep()
    assert engine.generate(prompts, params, n=2) == first, "generate wakes a sleeping engine"
    assert not engine.sleeping
    engine.resize_kv_cache(num_blocks=40)
    assert engine.generate(prompts, params, n=2) == first and engine.num_blocks == 40
