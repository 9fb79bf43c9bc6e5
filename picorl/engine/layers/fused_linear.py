"""One GEMM for projections that read the same input (q/k/v, gate/up), over the trainer's own weights.

Why: in a decode step (H100, Qwen3-4B shape, batch 256) q_proj, k_proj and v_proj as three cuBLAS
GEMMs take 13.4 + 7.7 + 7.7 us where one GEMM over the concatenated weight takes 16.2 us; gate_proj
and up_proj take 2 x 25.9 us against 49.1 us fused: ~0.55 ms of a 19 ms step over 36 layers.

The engine must still compute with the trainer's own tensors (an optimizer step shows in the next
rollout with no sync; PEFT LoRA runs unmerged). So nothing is copied for the engine: instead the
trainer's weights are re-homed. ``fuse_weights`` allocates one ``[sum(out_features), in_features]``
buffer, copies each weight into its rows once and sets ``param.data`` to that row slice: the same
Parameter objects with the same values, now views into one buffer that ``fused_forward`` multiplies
in one GEMM. Training is untouched (grads and optimizer state are separate tensors; in-place updates
land in the buffer). The trade-off: we change where the trainer's weights live, not what they are,
and anything that replaces ``.data`` (``model.to(dtype)``, a PEFT safe-merge) silently un-fuses a
weight, so the engine checks ``is_intact`` (pointer compares only) each generate and re-fuses.

The buffer may hold spare rows below the weights: a copy of the group's stacked LoRA ``A`` matrices
(:class:`StackedLora`), when they have the weights' dtype. Then one GEMM yields the base outputs and
the adapters' rank-r projections side by side, and only the ``B`` GEMM is left: one kernel launch
fewer per group in every decode step (the adapters' small GEMMs are launch-bound, not arithmetic).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StackedLora:
    """Every active LoRA adapter of a fused group as two GEMMs instead of two per adapter: ``x @ a.T``
    computes all their rank-r projections side by side, ``@ b.T`` maps each back onto its own module's
    output rows (``b`` is block-diagonal, each block ``scaling * lora_B``). Why: PEFT runs each adapter
    as its own cast + two small GEMMs, 14 per decoder layer with all-linear LoRA, and those small
    kernels, not arithmetic, were the engine's +34% per decode step with adapters (H200, 2026-12-01).
    Unlike the base weights these are copies, refreshed before each generate (:func:`stack_adapters`):
    a few MB, in the base weights' dtype (``EngineConfig.adapter_dtype = "model"``, the default) or in
    the adapters' own (fp32, PEFT's arithmetic to the letter)."""

    a: torch.Tensor  # [sum of ranks, in_features]; with ``folded``, the buffer's spare rows
    b: torch.Tensor  # [sum(sizes), sum of ranks]
    layout: tuple[tuple[int, str, int], ...]  # (module index, adapter name, rank) of each block
    folded: bool = False  # ``a`` lives in ``FusedWeights.buffer`` below the weights: one GEMM for both


@dataclass
class FusedWeights:
    """The buffers that the modules' weights (and biases) are row slices of, in module order."""

    weight: torch.Tensor  # [sum(sizes), in_features]: the first rows of ``buffer``
    bias: torch.Tensor | None  # [sum(sizes)], or None when no module has a bias
    sizes: tuple[int, ...]  # out_features of each module
    lora: StackedLora | None = None  # the group's adapters, stacked (None: each module adds its own)
    buffer: torch.Tensor | None = None  # [sum(sizes) + spare rows, in_features] (None: ``weight``)
    bias_buffer: torch.Tensor | None = None  # ``bias`` with zeros for the spare rows

    @property
    def spare_rows(self) -> int:
        return 0 if self.buffer is None else self.buffer.shape[0] - self.weight.shape[0]


def _lora_linear_type() -> type | None:
    # No module can be a LoRA layer unless PEFT is loaded; looking it up here spares plain-model
    # users PEFT's ~2 s import.
    layer = sys.modules.get("peft.tuners.lora.layer")
    return None if layer is None else layer.Linear


def base_linear(module: nn.Module) -> nn.Linear | None:
    """The plain ``nn.Linear`` that ``module`` computes its base projection with: the module itself
    or a PEFT ``lora.Linear``'s ``base_layer``; None for anything else. Types are matched exactly,
    since subclasses (bitsandbytes' Linear4bit, torchao's LoRA layer...) have forwards of their own."""
    if type(module) is nn.Linear:
        return module
    lora_linear = _lora_linear_type()
    if lora_linear is not None and type(module) is lora_linear and type(module.base_layer) is nn.Linear:
        return module.base_layer
    return None


def _dense(t: torch.Tensor) -> bool:
    return (
        type(t) in (torch.Tensor, nn.Parameter)
        and type(t.data) is torch.Tensor  # not a tensor subclass (quantized, DTensor...)
        and t.layout == torch.strided
        and t.is_contiguous()
        and not t.is_quantized
        and t.device.type != "meta"
    )


def fuse_weights(modules: Sequence[nn.Module], spare_rows: int = 0) -> FusedWeights | None:
    """Re-home the base weights (and biases) of ``modules`` as row slices of one buffer with
    ``spare_rows`` more rows (for folded LoRA ``A`` copies); see the module docstring. One module
    without spare rows keeps its own weight as the buffer (a group of one is fused for its stacked
    adapters). Returns None, touching nothing, when they cannot share one GEMM: a module
    without a plain ``nn.Linear`` base, different in_features, dtypes or devices, bias on some but
    not all, a weight that is not a plain contiguous dense tensor, or one Parameter in two modules."""
    linears = [base_linear(m) for m in modules]
    if not linears or any(lin is None for lin in linears):
        return None
    weights = [lin.weight for lin in linears]
    biases = [lin.bias for lin in linears]
    tensors = weights + [b for b in biases if b is not None]
    first = weights[0]
    if (
        any(b is None for b in biases) != all(b is None for b in biases)
        or len({id(w) for w in weights}) < len(weights)
        or any(w.dim() != 2 or w.shape[1] != first.shape[1] for w in weights)
        or any(not _dense(t) or t.dtype != first.dtype or t.device != first.device for t in tensors)
    ):
        return None
    sizes = tuple(w.shape[0] for w in weights)
    if len(weights) == 1 and not spare_rows:  # a group of one (o, down): its weight is its buffer
        return FusedWeights(first.data, None if biases[0] is None else biases[0].data, sizes)
    # Outside inference mode, so the buffers (and so the parameters) stay trainable tensors.
    with torch.inference_mode(False), torch.no_grad():
        spare = first.new_zeros(spare_rows, first.shape[1])
        buffer = torch.cat([w.data for w in weights] + [spare])
        bias_buffer = None
        if biases[0] is not None:
            bias_buffer = torch.cat([b.data for b in biases] + [biases[0].new_zeros(spare_rows)])
        start = 0
        for w, b, n in zip(weights, biases, sizes):
            w.data = buffer[start : start + n]
            if b is not None:
                b.data = bias_buffer[start : start + n]
            start += n
    total = sum(sizes)
    bias = None if bias_buffer is None else bias_buffer[:total]
    return FusedWeights(buffer[:total], bias, sizes, buffer=buffer, bias_buffer=bias_buffer)


def _is_slice(t: torch.Tensor | None, buffer: torch.Tensor, start: int, n: int) -> bool:
    row = buffer.stride(0)
    return (
        t is not None
        and t.data_ptr() == buffer.data_ptr() + start * row * buffer.element_size()
        and t.shape == (n, *buffer.shape[1:])
        and t.stride() == buffer.stride()
        and t.dtype == buffer.dtype
        and t.device == buffer.device
    )


def is_intact(fused: FusedWeights, modules: Sequence[nn.Module]) -> bool:
    """Whether every module's base weight (and bias) is still its row slice of ``fused``'s buffers.
    Cheap (pointer and shape compares); False once anything replaced a ``.data``."""
    if len(modules) != len(fused.sizes):
        return False
    start = 0
    for module, n in zip(modules, fused.sizes):
        lin = base_linear(module)
        if lin is None or not _is_slice(lin.weight, fused.weight, start, n):
            return False
        if (lin.bias is None) != (fused.bias is None):
            return False
        if fused.bias is not None and not _is_slice(lin.bias, fused.bias, start, n):
            return False
        start += n
    return True


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def adapters_supported(modules: Sequence[nn.Module]) -> bool:
    """Whether ``fused_forward`` reproduces each module's own forward in its current adapter state:
    plain ``nn.Linear``, or PEFT ``lora.Linear`` whose active adapters are plain LoRA (no DoRA or
    other variant, no lora_bias), without forward hooks. Also False for disabled adapters on a merged
    layer: PEFT's forward would then unmerge the weights in place. Check it before each generate."""
    for module in modules:
        lin = base_linear(module)
        if lin is None or _has_hooks(module) or _has_hooks(lin):
            return False
        if module is lin:
            continue
        if module.disable_adapters and module.merged:
            return False
        if module.disable_adapters or module.merged:
            continue  # base output only, as in PEFT
        for name in module.active_adapters:
            if name in module.lora_A and (
                name in module.lora_variant
                or module.use_dora.get(name, False)
                or module.lora_bias.get(name, False)
            ):
                return False
    return True


def _add_lora(layer: nn.Module, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    # The vanilla-LoRA path of peft's lora.Linear.forward, step for step: x is cast to each adapter's
    # dtype (and stays cast for the next one), the sum is promoted, then cast back once at the end.
    if layer.disable_adapters or layer.merged:
        return result
    result_dtype = result.dtype
    lora_names = layer.lora_A.keys()
    for name in layer.active_adapters:
        if name not in lora_names:
            continue
        lora_A = layer.lora_A[name]
        x = layer._cast_input_dtype(x, lora_A.weight.dtype)
        result = result + layer.lora_B[name](lora_A(layer.lora_dropout[name](x))) * layer.scaling[name]
    return result.to(result_dtype)


def _adding_adapters(modules: Sequence[nn.Module]) -> list[tuple[int, str]] | None:
    """(module index, adapter name) of every adapter that adds to its module's output, in the order
    PEFT adds them; None if one of them could not be stacked (a dropout module of another kind)."""
    entries = []
    for i, module in enumerate(modules):
        if type(module) is nn.Linear or module.disable_adapters or module.merged:
            continue
        for name in module.active_adapters:
            if name in module.lora_A:
                if type(module.lora_dropout[name]) not in (nn.Identity, nn.Dropout):  # eval: both identity
                    return None
                entries.append((i, name))
    return entries


def stacked_rank(modules: Sequence[nn.Module]) -> int:
    """The rows a :class:`StackedLora` of ``modules``' adding adapters has (0: none adds)."""
    entries = _adding_adapters(modules) or []
    return sum(modules[i].lora_A[name].weight.shape[0] for i, name in entries)


def adding_adapter_dtype(modules: Sequence[nn.Module]) -> torch.dtype | None:
    """The dtype of the first adapter that adds to ``modules``' outputs (None: none adds)."""
    entries = _adding_adapters(modules)
    if not entries:
        return None
    i, name = entries[0]
    return modules[i].lora_A[name].weight.dtype


def stack_adapters(
    fused: FusedWeights, modules: Sequence[nn.Module], dtype: torch.dtype | None = None
) -> StackedLora | None:
    """The adapters of ``modules`` (``fused``'s group) as a :class:`StackedLora` holding their present
    values: ``fused.lora`` refilled in place when the layout is unchanged (so a captured CUDA graph
    keeps reading it), else new buffers. None when no adapter adds to the group or they cannot be
    stacked (mixed dtypes or devices); then ``fused_forward`` lets each module add its own. Call it
    whenever the adapters may have changed (before each generate), and only where
    ``adapters_supported`` holds. Runs in eval mode, where LoRA dropout is the identity. ``dtype``:
    that of the copies, and so of the adapters' arithmetic (None: the adapters' own). When it is the
    weights' dtype and ``fused`` has enough spare rows, ``A`` is copied there (``folded``)."""
    entries = _adding_adapters(modules)
    if not entries:
        return None
    a_weights = [modules[i].lora_A[name].weight for i, name in entries]
    b_weights = [modules[i].lora_B[name].weight for i, name in entries]
    first = a_weights[0]
    if any(w.dtype != first.dtype or w.device != first.device for w in a_weights + b_weights):
        return None
    layout = tuple((i, name, w.shape[0]) for (i, name), w in zip(entries, a_weights))
    dtype = dtype or first.dtype
    rank = sum(r for _, _, r in layout)
    total = sum(fused.sizes)
    fold = (
        fused.spare_rows >= rank and dtype == fused.weight.dtype and first.device == fused.weight.device
    )
    a = fused.buffer[total : total + rank] if fold else None
    lora = fused.lora
    if (
        lora is None
        or lora.layout != layout
        or lora.a.dtype != dtype
        or lora.a.device != first.device
        or lora.folded != fold
        or (fold and lora.a.data_ptr() != a.data_ptr())
    ):
        with torch.inference_mode(False):
            if not fold:
                a = torch.empty(rank, first.shape[1], dtype=dtype, device=first.device)
            b = torch.zeros(total, rank, dtype=dtype, device=first.device)
        lora = StackedLora(a, b, layout, folded=fold)
    starts = [sum(fused.sizes[:i]) for i in range(len(fused.sizes))]
    column = 0
    with torch.no_grad():
        for (i, name, r), a_weight, b_weight in zip(layout, a_weights, b_weights):
            lora.a[column : column + r].copy_(a_weight)
            rows = slice(starts[i], starts[i] + fused.sizes[i])
            lora.b[rows, column : column + r].copy_(b_weight * modules[i].scaling[name])
            column += r
    return lora


def fused_forward(fused: FusedWeights, modules: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """``[m(x) for m in modules]`` as one GEMM over ``fused``'s buffers, split by ``sizes`` (views,
    not contiguous), plus the LoRA adapters: stacked (``fused.lora``, two GEMMs for the group) or each
    module's own. Valid while ``is_intact`` and ``adapters_supported`` hold and ``fused.lora`` is fresh;
    plain attribute checks only, so torch.compile(fullgraph=True) traces it."""
    lora = fused.lora
    if lora is not None and lora.folded:  # x @ [W; A].T: base outputs, then the rank-r projections
        total = sum(fused.sizes)
        rows = total + lora.a.shape[0]
        bias = None if fused.bias_buffer is None else fused.bias_buffer[:rows]
        both = F.linear(x, fused.buffer[:rows], bias)
        out = both[..., :total]
        delta = F.linear(both[..., total:], lora.b)
        return list((out + delta).split(fused.sizes, dim=-1))
    out = F.linear(x, fused.weight, fused.bias)
    if lora is not None:  # as PEFT: the sum in the adapters' dtype, cast back once
        delta = F.linear(F.linear(x.to(lora.a.dtype), lora.a), lora.b)
        return list((out + delta).to(out.dtype).split(fused.sizes, dim=-1))
    outs = out.split(fused.sizes, dim=-1)
    return [out if type(m) is nn.Linear else _add_lora(m, x, out) for m, out in zip(modules, outs)]
