"""Random-init test models: real architectures at toy size, with a real tokenizer and chat template.

They train and generate in seconds on a CPU, so smoke tests run the whole loop with the same code
paths (attention, norms, chat formatting) as the real models. Their weights are seeded, so every
load gives the same model; the vocabulary is the tokenizer's, so every token id is valid.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
)

from picorl.models.registry import TinyModel

_CONFIGS: dict[str, type[PretrainedConfig]] = {
    "qwen3": Qwen3Config,
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
}
INIT_SEED = 0
# 2 layers, hidden 64, 4 query heads and 2 KV heads of 16 (so grouped-query attention is exercised)
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


def tiny_config(architecture: str, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """``TINY_SHAPE`` over the tokenizer's vocabulary, embeddings tied."""
    if architecture not in _CONFIGS:
        raise ValueError(f"unknown tiny architecture {architecture!r}; choose one of {', '.join(_CONFIGS)}")
    return _CONFIGS[architecture](
        vocab_size=len(tokenizer),
        **TINY_SHAPE,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(
    entry: TinyModel, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype
) -> PreTrainedModel:
    """The tiny model ``entry`` sized to ``tokenizer``, initialised from a fixed seed.

    The seed is set inside a forked RNG, so building a tiny model leaves the caller's random
    stream (e.g. the run's ``--seed``) untouched.
    """
    config = tiny_config(entry.architecture, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(dtype).eval()
