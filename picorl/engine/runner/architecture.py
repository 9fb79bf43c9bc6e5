"""Find the Hugging Face decoder inside the trainer's model and check the engine can run it.

The engine calls the model's own modules, so all it needs is the causal LM object (through any PEFT
wrapper, found by type, never by parameter name) and a few shape facts from its config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from picorl.models.loading import unwrap_hf_model

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


@dataclass
class ModelSpec:
    lm: nn.Module  # the transformers *ForCausalLM (PEFT layers, if any, live inside its modules)
    num_layers: int
    num_kv_heads: int
    head_dim: int
    scale: float
    vocab_size: int
    max_position_embeddings: int
    dtype: torch.dtype
    device: torch.device


def inspect_model(model: nn.Module) -> ModelSpec:
    """Shape facts of a supported model; a clear error for anything else."""
    import transformers

    try:
        lm = unwrap_hf_model(model)
    except TypeError:
        lm = model  # not a transformers model at all: reported as unsupported below
    classes = tuple(getattr(transformers, name) for name in SUPPORTED_ARCHITECTURES)
    if not isinstance(lm, classes):
        raise ValueError(
            f"the picorl engine does not support {type(lm).__name__}; it runs {', '.join(SUPPORTED_ARCHITECTURES)} "
            "(optionally PEFT-wrapped). Use the reference engine (rollout engine 'hf') for other models."
        )
    config = lm.config
    layers = lm.model.layers
    for i, layer in enumerate(layers):
        if getattr(layer.self_attn, "sliding_window", None) is not None:
            raise ValueError(
                f"layer {i} of {type(lm).__name__} uses sliding-window attention, which the picorl engine does not "
                "implement; set use_sliding_window=False in the model config or use the 'hf' engine"
            )
    attn = layers[0].self_attn
    embed = lm.get_input_embeddings().weight
    return ModelSpec(
        lm=lm,
        num_layers=len(layers),
        num_kv_heads=config.num_key_value_heads,
        head_dim=attn.head_dim,
        scale=attn.scaling,
        vocab_size=embed.shape[0],
        max_position_embeddings=config.max_position_embeddings,
        dtype=embed.dtype,
        device=embed.device,
    )


def weights_signature(lm: nn.Module) -> tuple:
    """Changes when a captured CUDA graph would be stale: a parameter got new storage, or PEFT
    adapters were switched, disabled or merged (each changes which kernels a forward runs)."""
    pointers = tuple(p.data_ptr() for p in lm.parameters())
    adapters = tuple(
        (m.disable_adapters, tuple(m.active_adapters), m.merged)
        for m in lm.modules()
        if hasattr(m, "merged") and hasattr(m, "disable_adapters")
    )
    return pointers, adapters
