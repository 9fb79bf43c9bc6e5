"""Choose and build the rollout engine for a run."""

from __future__ import annotations

import torch

from picorl.config import Config
from picorl.rollout.hf_engine import HFEngine


def make_engine(config: Config, model, tokenizer, device: torch.device):
    """The built-in paged engine (default) or the transformers reference engine (``--engine hf``).

    The paged engine runs the policy's own modules, so it needs no weight sync, ever: an optimizer
    step is visible in the next rollout.
    """
    if config.rollout.engine == "hf":
        return HFEngine(model, tokenizer)
    from picorl.engine import EngineConfig, LLMEngine

    rollout = config.rollout
    max_len = _max_sequence_length(config)
    engine_config = EngineConfig(
        kv_cache_gib=rollout.kv_cache_gib,
        kv_cache_fraction=rollout.kv_cache_fraction if device.type == "cuda" else None,
        max_model_len=max_len,
    )
    return LLMEngine(model, tokenizer, engine_config)


def _max_sequence_length(config: Config) -> int:
    """Longest prompt + completion a run can produce (prompts of the hardest tier are ~600 tokens)."""
    longest_completion = max(config.rollout.max_tokens, config.eval.eval_max_tokens or 0)
    return 1024 + longest_completion * config.env.max_turns


def size_kv_cache_from_training_peak(
    engine, config: Config, device: torch.device, peak_bytes: int
) -> float | None:
    """Once the first training step has shown its peak, give the KV cache ``kv_cache_fraction`` of the
    memory that training leaves: free memory now, less what training transiently needs on top of what
    it keeps (so the next training step can never run out because of the cache). Returns the new size
    in GiB, or None when nothing was resized (CPU, the reference engine, or a fixed ``kv_cache_gib``)."""
    if (
        device.type != "cuda"
        or config.rollout.kv_cache_gib is not None
        or not hasattr(engine, "resize_kv_cache")
    ):
        return None
    from picorl.engine.vmm import kv_budget_bytes

    transient = max(0, peak_bytes - torch.cuda.memory_allocated(device))
    budget = kv_budget_bytes(
        fraction=config.rollout.kv_cache_fraction, reserve_bytes=transient, device=device
    )
    engine.resize_kv_cache(kv_cache_gib=budget / 2**30)
    return budget / 2**30
