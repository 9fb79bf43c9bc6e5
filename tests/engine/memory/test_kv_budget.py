"""The one KV-cache budget formula (``kv_budget_bytes``) and the engine's ``fit_kv_cache`` around it."""

import dataclasses

import pytest
import torch

from picorl.engine import EngineConfig, HFEngine, LLMEngine, SamplingParams
from picorl.engine.memory.kv_cache import kv_budget_bytes
from picorl.units import GIB

CPU = torch.device("cpu")


def test_cpu_budget_is_the_fixed_size_or_one_gib():
    assert kv_budget_bytes(CPU, kv_cache_gib=0.25) == GIB // 4
    assert kv_budget_bytes(CPU, kv_cache_gib=0.25, kv_cache_fraction=0.5) == GIB // 4, "a fixed size wins"
    assert kv_budget_bytes(CPU) == GIB


def test_fit_kv_cache_keeps_the_size_off_the_gpu(tiny_model):
    engine = LLMEngine(tiny_model("llama"), None, EngineConfig(num_blocks=8))
    assert engine.fit_kv_cache(training_peak_bytes=GIB) is None and engine.config.num_blocks == 8
    assert HFEngine(None, None).fit_kv_cache(training_peak_bytes=GIB) is None
    assert HFEngine(None, None).kv_cache_bytes == 0


def test_sizing_by_memory_stops_at_what_the_engine_can_fill(tiny_model):
    """max_num_seqs sequences of max_model_len tokens: 4 x 64 / 16 = 16 blocks, not the 1 GiB default;
    a size given in GiB is taken as given."""
    config = EngineConfig(max_model_len=64, max_num_seqs=4)
    engine = LLMEngine(tiny_model("llama"), None, config)
    engine.wake_up()
    assert engine.num_blocks == 16
    prompts = [[1, 2, 3, 4, 5]] * 6  # more sequences than fit at once: they take turns
    params = SamplingParams(max_tokens=40, seed=0, ignore_eos=True)
    assert all(len(c[0].token_ids) == 40 for c in engine.generate(prompts, params))
    fixed = LLMEngine(tiny_model("llama"), None, dataclasses.replace(config, kv_cache_gib=0.01))
    fixed.wake_up()
    assert fixed.num_blocks == 0.01 * GIB // fixed.block_bytes - 1 > 16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_budget_is_a_fraction_of_free_memory_less_the_reserve():
    cuda = torch.device("cuda")
    torch.cuda.empty_cache()
    free = torch.cuda.mem_get_info()[0]
    half = kv_budget_bytes(cuda, kv_cache_fraction=0.5)
    assert abs(half - free / 2) < 0.02 * free
    assert kv_budget_bytes(cuda, kv_cache_fraction=0.5, reserve_bytes=GIB) == pytest.approx(
        half - GIB / 2, rel=0.02
    )
    assert kv_budget_bytes(cuda, kv_cache_gib=1.5) == int(1.5 * GIB)
    with pytest.raises(MemoryError, match="exceeds"):
        kv_budget_bytes(cuda, kv_cache_gib=10_000)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_kv_cache_sizes_by_the_training_peak(tiny_model):
    """The fitted cache is the fraction of what training leaves: a higher peak, a smaller cache."""
    model = tiny_model("llama").cuda()
    config = EngineConfig(kv_cache_fraction=0.1, max_num_seqs=10**6)  # so many that the memory binds
    engine = LLMEngine(model, None, config)
    resting = torch.cuda.memory_allocated()
    small_peak = engine.fit_kv_cache(training_peak_bytes=resting)
    assert small_peak == engine.kv_cache_bytes > 0
    assert engine.fit_kv_cache(training_peak_bytes=resting) is None, "sized once: the size is fixed now"
    engine = LLMEngine(model, None, config)
    assert engine.fit_kv_cache(training_peak_bytes=resting + 8 * GIB) < small_peak
