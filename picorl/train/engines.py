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
