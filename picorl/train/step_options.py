"""How the train step runs, as ``[train]`` says: micro-batches sized in tokens (or from free GPU memory),
bf16 autocast of the decoder, a compiled decoder. None of them changes what is computed beyond
rounding; all are off by default until a GPU measurement says they pay (``benchmarks/update.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from picorl.config import TrainConfig
from picorl.models.loading import unwrap_hf_model

# Share of the free memory that auto-sized micro-batches may plan to fill: the per-token cost is a
# measured average, and the allocator fragments.
AUTO_MEMORY_FRACTION = 0.8


@dataclass
class TokenBudget:
    """Micro-batch size in padded tokens for ``micro_batch_tokens = 0``: the GPU memory free when the
    train phase starts over the bytes one padded token took at the last update's peak (peak less what
    was allocated before training, over its largest micro-batch). Knows nothing before the first
    measured update, and nothing on a CPU: then the caller falls back to ``micro_batch_size``."""

    bytes_per_token: float | None = None
    start_bytes: int = 0

    def begin(self, device: torch.device) -> int | None:
        """Call when training starts (KV cache asleep, peak stats reset): the token budget, or None."""
        if device.type != "cuda":
            return None
        self.start_bytes = torch.cuda.memory_allocated(device)
        if self.bytes_per_token is None:
            return None
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - self.start_bytes  # cached by torch, reusable
        return max(1, int(AUTO_MEMORY_FRACTION * free / self.bytes_per_token))

    def end(self, device: torch.device, largest_padded_tokens: int) -> None:
        """Call after the optimizer step: learn bytes per padded token from this update's peak."""
        if device.type != "cuda" or largest_padded_tokens < 1:
            return
        grown = torch.cuda.max_memory_allocated(device) - self.start_bytes
        self.bytes_per_token = max(grown, 1) / largest_padded_tokens


def micro_batch_tokens(train: TrainConfig, budget: TokenBudget, device: torch.device) -> int | None:
    """The padded-token limit of this update's micro-batches, or None for ``micro_batch_size`` rows."""
    if train.micro_batch_tokens is None:
        return None
    auto = budget.begin(device)
    return train.micro_batch_tokens or auto


def autocast(enabled: bool, device: torch.device):
    """bf16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def adapter_input_casts_off(model: torch.nn.Module, enabled: bool):
    """With ``train_autocast``, for the whole train phase (forward, and backward: gradient
    checkpointing re-runs the forward there): PEFT's LoRA layers stop casting their bf16 input to the
    fp32 adapter dtype, a copy kernel per adapter that autocast would only cast back. Outside it the
    engine's eager adapters need the cast, so it is switched back on when the phase ends."""
    from peft.helpers import disable_input_dtype_casting

    return disable_input_dtype_casting(model, active=enabled)


class CompiledDecoder:
    """The decoder (the transformers base model under the LM head) through ``torch.compile``, made
    once per policy and reused: the engine calls the same modules eagerly, so compiling here does not
    touch it. ``dynamic=None`` lets the first recompile for a new length switch to dynamic shapes."""

    def __init__(self) -> None:
        self.module: torch.nn.Module | None = None
        self.compiled: Callable | None = None

    def __call__(self, model: torch.nn.Module) -> Callable:
        decoder = unwrap_hf_model(model).model
        if self.module is not decoder:
            self.module, self.compiled = decoder, torch.compile(decoder)
        return self.compiled
