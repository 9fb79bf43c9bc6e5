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
        if not config.full_finetune:
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def load_trainable_adapter(model, path: str):
    """``model`` with the PEFT adapter saved at ``path`` attached, its weights trainable."""
    from pathlib import Path

    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise ValueError(f"init_adapter {path} is not a saved adapter folder (no adapter_config.json)")
    return PeftModel.from_pretrained(model, path, is_trainable=True)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
