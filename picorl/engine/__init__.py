"""The built-in rollout engine (paged KV cache, continuous batching, shared weights)."""

from picorl.engine.architecture import SUPPORTED_ARCHITECTURES
from picorl.engine.attention import paged_decode_attention_torch
from picorl.engine.config import EngineConfig
from picorl.engine.kv_cache import KVStorage, TorchKVStorage
from picorl.engine.llm_engine import LLMEngine

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "EngineConfig",
    "KVStorage",
    "LLMEngine",
    "TorchKVStorage",
    "paged_decode_attention_torch",
]
