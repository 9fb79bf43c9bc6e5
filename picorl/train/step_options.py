"""How the train step runs, as ``[train]`` says: micro-batches sized in tokens (or from free GPU memory),
bf16 autocast of the decoder, compiled decoder layers, the SDPA kernel tried first. None of them
changes what is computed beyond rounding; all are off by default until a GPU measurement says they
pay (``benchmarks/update.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

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


class CompiledLayers:
    """``compile_train``: each decoder layer's call through ``torch.compile`` while the train phase
    runs (regional compilation). The layers share one class and code, so one compiled graph, with
    dynamic shapes (sequence lengths change every update), serves all of them: compiling the whole
    decoder instead unrolled its layers and took ~150 s on an H200 for SmolLM2, then recompiled for the
    next update's length. The compiled calls are swapped in on entry and out on exit (what
    ``nn.Module.compile`` sets, ``_compiled_call_impl``), so the phase's backward, where gradient
    checkpointing re-runs each layer, sees the same compiled layers, and the engine and the evaluation,
    outside the phase, the eager ones. Made once per policy and reused."""

    def __init__(self) -> None:
        self.layers: list[torch.nn.Module] = []
        self.calls: list[Callable] = []

    @contextlib.contextmanager
    def __call__(self, model: torch.nn.Module, enabled: bool):
        if not enabled:
            yield
            return
        layers = list(unwrap_hf_model(model).model.layers)
        if [id(m) for m in layers] != [id(m) for m in self.layers]:
            self.layers = layers
            self.calls = [torch.compile(layer._call_impl, dynamic=True) for layer in layers]
        for layer, call in zip(layers, self.calls):
            layer._compiled_call_impl = call
        # transformers checkpoints inside the layer's call, so the compiled graph holds the checkpoint;
        # the one side effect in it, a mode flag of the ``kernels`` layers, needs no replay in backward
        try:
            with torch._dynamo.config.patch(skip_fwd_side_effects_in_bwd_under_checkpoint=True):
                yield
        finally:
            for layer in layers:
                layer._compiled_call_impl = None


# train_attention's kernel names (TrainConfig's TRAIN_ATTENTION, but "auto"); benchmarks/sdpa_backends.py times them
SDPA_KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def attention_first(name: str):
    """``train_attention``: SDPA tries kernel ``name`` first, then the others in torch's current order
    (so a kernel that cannot run a shape or device still falls back); "auto" changes nothing.

    Why it is an option: without a mask, torch picks cuDNN's attention on Hopper GPUs, and cuDNN
    builds an execution plan for every new shape; the train phase's micro-batch lengths change every
    update, and the flash kernel needs no plan (``benchmarks/sdpa_backends.py`` times both)."""
    if name == "auto":
        return contextlib.nullcontext()
    first = SDPA_KERNELS[name]
    order = [SDPBackend(i) for i in torch._C._get_sdp_priority_order()]
    return sdpa_kernel([first] + [b for b in order if b != first], set_priority=True)


@contextlib.contextmanager
def train_phase(model: torch.nn.Module, train: TrainConfig, compiled: CompiledLayers):
    """What the options change for a whole train phase, forward and backward: PEFT's input casts off
    under ``train_autocast``, the compiled layers in under ``compile_train``, the SDPA kernel order
    under ``train_attention``."""
    with (
        adapter_input_casts_off(model, train.train_autocast),
        compiled(model, train.compile_train),
        attention_first(train.train_attention),
    ):
        yield
