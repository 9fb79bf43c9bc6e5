"""Turn a loaded causal LM into the trained policy: a LoRA adapter (PEFT) or every weight."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, get_peft_model

from picorl.models.loading import unwrap_hf_model

if TYPE_CHECKING:
    from picorl.config import ModelConfig


def make_policy(model, config: ModelConfig):
    """Wrap ``model`` for training as ``config`` says; returns the (possibly PEFT-wrapped) model.

    With LoRA only the adapter weights require grad. The adapter runs unmerged, in the same modules
    the rollout engine calls, so the sampled policy is exactly the trained one (no bf16 merge drift).
    """
    if config.full_finetune:
        if config.init_adapter:
            raise ValueError("init_adapter starts from a LoRA adapter; drop it or drop full_finetune")
        model.requires_grad_(True)
    elif config.init_adapter:
        model = load_trainable_adapter(model, config.init_adapter)
    else:
        targets = config.lora_target_modules
        target_modules = (
            targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        )
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=target_modules,
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            raise ValueError(f"could not apply LoRA with target modules {targets!r}: {e}") from None
    if config.gradient_checkpointing:
        unwrap_hf_model(model).gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        checkpoint_first_layers(model, config.checkpoint_layers)
        if not config.full_finetune:
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def checkpoint_first_layers(model, share: float) -> None:
    """Keep gradient checkpointing on the first ``share`` of the decoder layers only (transformers reads
    each layer's own ``gradient_checkpointing`` flag)."""
    layers = list(unwrap_hf_model(model).model.layers)
    recomputing = round(share * len(layers))
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < recomputing


def load_trainable_adapter(model, path: str):
    """``model`` with the PEFT adapter saved at ``path`` attached, its weights trainable."""
    from pathlib import Path

    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise ValueError(f"init_adapter {path} is not a saved adapter folder (no adapter_config.json)")
    return PeftModel.from_pretrained(model, path, is_trainable=True)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def trained_weights_copy(model) -> dict[str, torch.Tensor]:
    """A detached copy of the weights training changes, by parameter name (the KL penalty's
    ``start`` reference: the policy as RL finds it)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def weights_swapped(model, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run the block with ``weights`` in place of the named parameters' values, then restore them.

    Copied in place, so every tensor keeps its storage (the engine's fused buffers stay intact) and no
    second model is built; for a LoRA policy the copy is the adapter alone (~40 MB at 135M, r=32)."""
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"the reference weights name parameters this model lacks: {unknown[:3]}")
    with torch.no_grad():
        saved = {name: params[name].detach().clone() for name in weights}
        for name, value in weights.items():
            params[name].copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
