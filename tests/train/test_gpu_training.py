"""GPU-only: training's peak excludes the KV cache, and wake-up after a training step never fails
(footgun 1). CPU CI skips these visibly; they run on the GPU machine."""

import pytest
import torch

from picorl.cli import main
from picorl.engine import LLMEngine
from picorl.logging.metrics import read_jsonl
from picorl.units import GIB

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_training_peak_excludes_kv_cache_and_wake_survives(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [
        "train", "--model", "tiny-qwen3", "--k", "4", "--num-tasks", "2", "--max-tokens", "16",
        "--eval-num-tasks", "4", "--eval-tiers", "1", "--sft-steps", "0", "--num-updates", "3",
        "--kv-cache-gib", "4", "--name", "gpu",
    ]  # fmt: skip
    assert main(args) == 0
    train = [r for r in read_jsonl(tmp_path / "runs/gpu/metrics.jsonl") if r["kind"] == "train"]
    assert len(train) == 3  # three wake-ups after training steps, none failed
    for row in train:
        assert row["memory/kv_cache_gb"] > 3.5
        # the tiny model trains in about 1 GB; were the 4 GiB cache counted, the peak would exceed 4
        assert row["memory/peak_gb"] < row["memory/kv_cache_gb"] - 2, (
            "the KV cache counted toward training's peak"
        )


def test_kv_cache_is_sized_after_the_first_training_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a tiny model's cache would stop at what the engine can fill (tests/engine/memory): let the
    # memory bind, as it does for a real model
    monkeypatch.setattr(LLMEngine, "_usable_blocks", lambda self: 10**12)
    args = [
        "train", "--model", "tiny-llama", "--k", "4", "--num-tasks", "2", "--max-tokens", "16",
        "--eval-num-tasks", "4", "--eval-tiers", "1", "--sft-steps", "0", "--num-updates", "2",
        "--kv-cache-fraction", "0.1", "--name", "sized",
    ]  # fmt: skip
    assert main(args) == 0
    train = [r for r in read_jsonl(tmp_path / "runs/sized/metrics.jsonl") if r["kind"] == "train"]
    free, total = torch.cuda.mem_get_info()
    assert 0 < train[0]["engine/kv_cache_gb"] <= 0.1 * total / GIB + 0.1
    assert train[1]["memory/kv_cache_gb"] == pytest.approx(train[0]["engine/kv_cache_gb"], rel=0.05)


@pytest.mark.parametrize("kernel, op", [
    ("flash", "aten::_scaled_dot_product_flash_attention"),
    ("efficient", "aten::_scaled_dot_product_efficient_attention"),
])  # fmt: skip
def test_train_attention_runs_its_kernel_in_the_train_phase(kernel, op):
    from picorl.config import ModelConfig, build_config
    from picorl.train.logprobs import chosen_token_logprobs
    from picorl.train.policy import make_policy
    from picorl.train.step_options import CompiledLayers, train_phase
    from tests.conftest import tiny_llama

    model = make_policy(tiny_llama().to("cuda", torch.bfloat16), ModelConfig(lora_rank=4))
    train = build_config({"train": {"train_attention": kernel}}).train
    ids = torch.randint(1, 128, (4, 40), device="cuda")
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    with profiler as prof, train_phase(model, train, CompiledLayers()):
        chosen_token_logprobs(model, ids, None, torch.ones_like(ids, dtype=torch.bool)).sum().backward()
    ops = {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}
    assert op in ops, ops
