"""torch.compile of the decoder layers: same results as the eager modules, still the model's own
parameters (an in-place update shows), PEFT LoRA unmerged. Compiling takes ~30 s on 2 CPU cores,
so the CPU run is marked slow; on CUDA (where compile is on by default) it runs with the GPU tests."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from picorl.engine import EngineConfig, LLMEngine
from picorl.engine.runner.model_runner import LayerSteps
from picorl.engine.types import SamplingParams

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.slow),
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ],
    ),
]


def assert_same(out, expected) -> None:
    for group, expected_group in zip(out, expected, strict=True):
        for c, e in zip(group, expected_group, strict=True):
            assert (c.token_ids, c.finish_reason) == (e.token_ids, e.finish_reason)
            torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(e.logprobs), atol=1e-4, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_layers_equal_the_eager_modules(device, tiny_model, random_prompts) -> None:
    model = get_peft_model(
        tiny_model("qwen3"), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    ).to(device)
    prompts = random_prompts([3, 9, 17, 1])
    params = SamplingParams(max_tokens=12, temperature=0.8, seed=3)
    config = dict(block_size=4, num_blocks=64, fused_sampling=False)  # same sampler both ways
    compiled = LLMEngine(model, None, EngineConfig(compile=True, **config))
    eager = LLMEngine(model, None, EngineConfig(compile=False, **config))
    assert eager.runner.steps == LayerSteps() and compiled.runner.steps != LayerSteps()
    assert_same(compiled.generate(prompts, params, n=2), eager.generate(prompts, params, n=2))
    assert compiled.use_compile and compiled.setup_stats["compile_s"] > 0, "compiled, and timed"
    with torch.no_grad():  # an optimizer step's in-place update reaches the compiled layers too
        for name, p in model.named_parameters():
            if "lora_B" in name or "mlp.up_proj.base_layer" in name:
                p.mul_(-2.0)
    after = compiled.generate(prompts, params, n=2)
    assert_same(after, eager.generate(prompts, params, n=2))
    assert compiled.use_compile, "no silent fallback to the eager modules"
