"""Turn a loaded causal LM into the trained policy: a LoRA adapter (PEFT) or every weight."""

from __future__ import annotations

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
        model.requires_grad_(True)
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
        if not config.full_finetune:
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
