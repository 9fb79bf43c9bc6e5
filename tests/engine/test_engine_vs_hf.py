"""The engine against transformers: same greedy tokens, same log-probs, for each architecture."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from picorl.engine import EngineConfig, LLMEngine
from picorl.engine.types import SamplingParams

LENGTHS = [3, 4, 7, 9, 16, 1]  # block_size 4: partial and full last blocks, and a 1-token prompt
CONFIG = dict(block_size=4, num_blocks=256)


@pytest.mark.parametrize(
    ("arch", "fuse"), [("llama", True), ("qwen2", True), ("qwen3", True), ("qwen2", False), ("qwen3", False)]
)
def test_greedy_equals_transformers_generate(arch, fuse, tiny_model, random_prompts, hf_greedy) -> None:
    model = tiny_model(arch)
    eos = model.generation_config.eos_token_id
    prompts = random_prompts(LENGTHS)
    engine = LLMEngine(model, None, EngineConfig(**CONFIG, fuse_projections=fuse))
    out = engine.generate(prompts, SamplingParams(max_tokens=20, temperature=0))
    for prompt, (completion,) in zip(prompts, out):
        expected = hf_greedy(model, prompt, 20)
        assert completion.token_ids == expected
        assert completion.finish_reason == ("stop" if expected[-1] == eos else "length")
        assert len(completion.logprobs) == len(completion.token_ids)
    assert engine.last_stats["tokens"] == sum(len(c[0].token_ids) for c in out)
    assert engine.last_stats["prefill_tokens"] == sum(LENGTHS)
    assert engine.last_stats["preemptions"] == 0
    # one prefill step gives every first token, then one decode step per further token of the longest
    stats = engine.last_stats
    assert stats["prefill_steps"] == 1 and stats["decode_steps"] == max(len(c[0].token_ids) for c in out) - 1
    assert 0 < stats["prefill_s"] + stats["decode_s"] <= stats["seconds"]
    fused = [all(g is not None for g in (f.qkv, f.o, f.gate_up, f.down)) for f in engine.runner.fusion]
    assert fused == [fuse] * len(fused), "fuse_projections decides whether the projections run as one GEMM"


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_logprobs_equal_a_forward_pass(arch, tiny_model, random_prompts, hf_logprobs) -> None:
    model = tiny_model(arch)
    prompts = random_prompts([5, 8, 13])
    engine = LLMEngine(model, None, EngineConfig(**CONFIG))
    greedy = engine.generate(prompts, SamplingParams(max_tokens=12, temperature=0))
    for prompt, (c,) in zip(prompts, greedy):
        torch.testing.assert_close(
            torch.tensor(c.logprobs), hf_logprobs(model, prompt, c.token_ids), atol=1e-4, rtol=0
        )

    # sampled with truncation: log-probs are those of log_softmax(logits / T) before top-k / top-p
    params = SamplingParams(max_tokens=12, temperature=0.7, top_k=40, top_p=0.9, seed=3)
    sampled = engine.generate(prompts, params, n=4)
    for prompt, group in zip(prompts, sampled):
        assert len(group) == 4
        assert len({tuple(c.token_ids) for c in group}) > 1, "the 4 samples of a prompt should differ"
        for c in group:  # forked samples read the shared (and copied partial) prompt blocks
            expected = hf_logprobs(model, prompt, c.token_ids, temperature=0.7)
            torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("stack_adapters", "fold_adapters"), [(True, True), (True, False), (False, False)])
def test_peft_lora_model_equals_transformers_generate(
    tiny_model, random_prompts, hf_greedy, stack_adapters, fold_adapters
) -> None:
    model = get_peft_model(
        tiny_model("qwen3"), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    prompts = random_prompts([6, 11])
    config = EngineConfig(**CONFIG, stack_adapters=stack_adapters, fold_adapters=fold_adapters)
    engine = LLMEngine(model, None, config)
    out = engine.generate(prompts, SamplingParams(max_tokens=16, temperature=0))
    stacks = [f.lora for layer in engine.runner.fusion for f in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    assert all((s is not None) == stack_adapters for s in stacks)
    assert all(s.folded == fold_adapters for s in stacks if s is not None)  # fp32 adapters on fp32 weights
    base = tiny_model("qwen3")  # same seed: the model without the adapter
    differs = False
    for prompt, (completion,) in zip(prompts, out):
        assert completion.token_ids == hf_greedy(model, prompt, 16)
        differs |= completion.token_ids != hf_greedy(base, prompt, 16)
    assert differs, "the adapter (nonzero B) should change the greedy output"


def test_adapters_in_the_model_dtype_sample_the_bf16_model_greedily(tiny_model, random_prompts, hf_greedy) -> None:
    """``adapter_dtype="model"`` on a bf16 PEFT model: the stacks are bf16 and greedy decoding still
    follows the PEFT model's own (fp32-adapter) forward token for token on these prompts."""
    model = get_peft_model(
        tiny_model("qwen3").to(torch.bfloat16), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    prompts = random_prompts([6, 11])
    engine = LLMEngine(model, None, EngineConfig(**CONFIG, adapter_dtype="model"))
    out = engine.generate(prompts, SamplingParams(max_tokens=8, temperature=0))
    stacks = [f.lora for layer in engine.runner.fusion for f in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    assert stacks and all(s is not None and s.a.dtype == torch.bfloat16 and s.folded for s in stacks)
    for prompt, (completion,) in zip(prompts, out):
        assert completion.token_ids == hf_greedy(model, prompt, 8)


def test_sampling_is_reproducible_with_a_seed(tiny_model, random_prompts) -> None:
    engine = LLMEngine(tiny_model("llama"), None, EngineConfig(**CONFIG))
    prompts = random_prompts([4, 9])
    params = SamplingParams(max_tokens=10, temperature=1.0, seed=7)
    first = engine.generate(prompts, params, n=3)
    again = engine.generate(prompts, params, n=3)
    other = engine.generate(prompts, SamplingParams(max_tokens=10, temperature=1.0, seed=8), n=3)
    assert [[c.token_ids for c in g] for g in first] == [[c.token_ids for c in g] for g in again]
    assert [[c.token_ids for c in g] for g in first] != [[c.token_ids for c in g] for g in other]
