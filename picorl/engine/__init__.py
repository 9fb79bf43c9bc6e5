"""The rollout engines and their interface; this package imports nothing from the rest of picorl
but ``picorl.options`` and ``picorl.models`` (see docs/architecture.md).

- ``types.py``: the interface (:class:`RolloutEngine`, :class:`SamplingParams`, :class:`Completion`).
- ``llm_engine.py``: the built-in paged engine (:class:`LLMEngine`), configured by ``config.py``;
  its parts by role: ``scheduling/`` (sequences, blocks, batches, the step loop), ``memory/`` (the
  KV cache, its budget, sleep/wake), ``layers/`` (attention, Triton kernels, sampler, fused
  projections), ``runner/`` (the model's layers run step by step, torch.compile, CUDA graphs).
- ``hf_engine.py``: the reference engine over transformers ``generate`` (:class:`HFEngine`).
"""

from picorl.engine.config import EngineConfig
from picorl.engine.hf_engine import HFEngine
from picorl.engine.layers.attention import paged_decode_attention_torch
from picorl.engine.llm_engine import LLMEngine
from picorl.engine.memory.kv_cache import KVStorage, TorchKVStorage
from picorl.engine.runner.architecture import SUPPORTED_ARCHITECTURES
from picorl.engine.types import Completion, RolloutEngine, SamplingParams

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "Completion",
    "EngineConfig",
    "HFEngine",
    "KVStorage",
    "LLMEngine",
    "RolloutEngine",
    "SamplingParams",
    "TorchKVStorage",
    "paged_decode_attention_torch",
]
