"""Run the trainer's own modules over flattened token batches, with paged attention in between.

Nothing is copied or renamed: each decoder layer's own ``input_layernorm``, ``q/k/v_proj`` (and
``q_norm``/``k_norm``), ``o_proj``, ``post_attention_layernorm`` and ``mlp`` are called, then the
final ``norm`` and ``lm_head``. PEFT LoRA layers among them run unmerged, as in training, and an
optimizer step on any weight shows in the next generate. Only attention (with the model's own rotary
module) is done here, against the paged KV cache. The module calls between two attention calls are
grouped in ``pre_attention`` / ``post_attention`` so that they can be compiled as a unit
(``picorl.engine.runner.compiled``): the modules and their parameters stay the model's own either way.
With ``fuse_projections``, q/k/v and gate/up each run as one GEMM over a buffer that their weights
were re-homed into (``picorl.engine.layers.fused_linear``: still the trainer's parameters, not copies),
o and down over their own weights, each group plus its LoRA adapters as two more GEMMs (copies of the
adapter weights, refreshed before each generate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from picorl.engine.layers.attention import DecodeAttention, prefill_attention, store_kv
from picorl.engine.layers.fused_linear import (
    FusedWeights,
    adapters_supported,
    adding_adapter_dtype,
    fuse_weights,
    fused_forward,
    is_intact,
    stack_adapters,
    stacked_rank,
)
from picorl.engine.memory.kv_cache import KVCache
from picorl.engine.runner.architecture import ModelSpec
from picorl.engine.scheduling.sequence import Sequence

Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class DecodeInputs:
    """Device tensors for one decode step of B sequences (the CUDA-graph runner copies these)."""

    input_ids: torch.Tensor  # [B] int64, each sequence's last token
    positions: torch.Tensor  # [B] int64
    slots: torch.Tensor  # [B] int64, where its K/V go
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with the null block
    context_lens: torch.Tensor  # [B] int32, cached tokens including this one


@dataclass
class LayerFusion:
    """A layer's projection groups as ``fused_forward`` runs them this call (None: the modules are
    called). q/k/v and gate/up are one GEMM each; o and down are groups of one, so that their LoRA
    adapters, too, run as the stacked pair instead of PEFT's own (order of ``projection_groups``)."""

    qkv: FusedWeights | None = None
    o: FusedWeights | None = None
    gate_up: FusedWeights | None = None
    down: FusedWeights | None = None


class ModelRunner:
    def __init__(
        self,
        spec: ModelSpec,
        decode_attention: DecodeAttention,
        steps: LayerSteps | None = None,
        fuse_projections: bool = False,
        stack_adapters: bool = True,
        adapter_dtype: str = "model",
        fold_adapters: bool = True,
    ) -> None:
        self.spec = spec
        self.decode_attention = decode_attention
        self.steps = steps or LayerSteps()
        self.fuse_projections = fuse_projections
        self.stack_adapters = stack_adapters
        self.adapter_dtype = adapter_dtype  # EngineConfig.adapter_dtype
        self.fold_adapters = fold_adapters  # EngineConfig.fold_adapters
        self.buffers: list[list[FusedWeights | None]] = []  # per layer, per projection group (fused_linear)
        self.fusion = [LayerFusion() for _ in range(spec.num_layers)]

    def refresh_fusion(self) -> None:
        """Before each generate: re-home any projection group whose weights no longer live in their
        fused buffer (first call, ``model.to``, a safe merge...), then fuse each group whose current
        adapters ``fused_forward`` reproduces; the others call their modules."""
        if not self.fuse_projections:
            return
        layers = self.spec.lm.model.layers
        if not self.buffers:
            self.buffers = [[None] * len(projection_groups(layer)) for layer in layers]
        for i, layer in enumerate(layers):
            usable: list[FusedWeights | None] = []
            for g, modules in enumerate(projection_groups(layer)):
                fused = self.buffers[i][g]
                if fused is None or not is_intact(fused, modules):
                    self.buffers[i][g] = fused = fuse_weights(modules)
                if fused is not None and adapters_supported(modules):
                    # this generate's adapter values (None: each PEFT layer adds its own)
                    dtype = fused.weight.dtype if self.adapter_dtype == "model" else None
                    spare_rows = self._spare_rows_needed(fused, modules, dtype) if self.stack_adapters else 0
                    if spare_rows:
                        self.buffers[i][g] = fused = fuse_weights(modules, spare_rows=spare_rows)
                    fused.lora = stack_adapters(fused, modules, dtype) if self.stack_adapters else None
                    usable.append(fused)
                else:
                    usable.append(None)
            self.fusion[i] = LayerFusion(*usable)

    def _spare_rows_needed(self, fused: FusedWeights, modules: tuple[nn.Module, ...], dtype) -> int:
        """The rows the group's buffer must be re-fused with so that its stacked A folds into it
        (``fold_adapters``, adapters in the weights' dtype); 0 when it has them (or cannot fold)."""
        if not self.fold_adapters:
            return 0
        rank = stacked_rank(modules)
        if not rank or rank <= fused.spare_rows:
            return 0
        return rank if (dtype or adding_adapter_dtype(modules)) == fused.weight.dtype else 0

    def fusion_signature(self) -> tuple:
        """Changes when a CUDA graph captured over the fused groups would be stale: a group fused or
        not, its adapters stacked into other buffers (the fused weights' own pointers are parameters',
        which ``weights_signature`` covers)."""
        return tuple(
            (f is not None, None if f is None or f.lora is None else (f.lora.a.data_ptr(), f.lora.b.data_ptr()))
            for fusion in self.fusion
            for f in (fusion.qkv, fusion.o, fusion.gate_up, fusion.down)
        )

    def prefill(self, seqs: list[Sequence], kv: KVCache) -> torch.Tensor:
        """Run every token of each sequence from position 0, filling its blocks; returns the logits
        of each sequence's last token, ``[len(seqs), vocab]``."""
        bs = kv.block_size
        ids: list[int] = []
        positions: list[int] = []
        slot_ids: list[int] = []
        for seq in seqs:
            ids += seq.token_ids
            positions += range(len(seq))
            slot_ids += [seq.block_table[p // bs] * bs + p % bs for p in range(len(seq))]
        seq_lens = [len(s) for s in seqs]
        device = self.spec.device
        slots = torch.tensor(slot_ids, device=device)

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            store_kv(kv.keys[layer], kv.values[layer], k, v, slots)
            return prefill_attention(q, k, v, seq_lens, self.spec.scale)

        hidden = self.forward(
            torch.tensor(ids, device=device), torch.tensor(positions, device=device), attend
        )
        last = torch.tensor(seq_lens, device=device).cumsum(0) - 1
        return self.logits(hidden[last])

    def prepare_decode(self, seqs: list[Sequence], kv: KVCache) -> DecodeInputs:
        """Decode inputs built from the sequences' Python lists: the reference that the engine's
        incremental ``decode_inputs.DecodeInputBuilder`` is tested against."""
        bs = kv.block_size
        width = max(len(s.block_table) for s in seqs)
        tables = [s.block_table + [kv.null_block] * (width - len(s.block_table)) for s in seqs]
        slots = [s.block_table[(len(s) - 1) // bs] * bs + (len(s) - 1) % bs for s in seqs]
        device = self.spec.device
        return DecodeInputs(
            input_ids=torch.tensor([s.token_ids[-1] for s in seqs], device=device),
            positions=torch.tensor([len(s) - 1 for s in seqs], device=device),
            slots=torch.tensor(slots, device=device),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
            context_lens=torch.tensor([len(s) for s in seqs], dtype=torch.int32, device=device),
        )

    def decode(self, inputs: DecodeInputs, kv: KVCache) -> torch.Tensor:
        """One token per sequence; returns ``[B, vocab]`` logits. No host syncs: CUDA-graph safe."""

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            out = self.decode_attention(
                q.to(kv.dtype),
                kv.keys[layer],
                kv.values[layer],
                inputs.block_tables,
                inputs.context_lens,
                self.spec.scale,
                new_kv=(k, v, inputs.slots),
            )
            return out.to(q.dtype)

        hidden = self.forward(inputs.input_ids, inputs.positions, attend)
        return self.logits(hidden)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attend: Attend) -> torch.Tensor:
        """Hidden states ``[N, hidden]`` after the last decoder layer (before the final norm).
        ``attend(layer, q, k, v)`` stores the tokens' K/V in the cache and returns the attention output."""
        model = self.spec.lm.model
        hidden = model.embed_tokens(input_ids)
        cos, sin = model.rotary_emb(hidden, positions[None])
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # broadcast over heads
        for i, layer in enumerate(model.layers):
            fusion = self.fusion[i]
            q, k, v = self.steps.pre_attention(layer, hidden, cos, sin, fusion.qkv)
            hidden = self.steps.post_attention(
                layer, hidden, attend(i, q, k, v), fusion.gate_up, fusion.o, fusion.down
            )
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        lm = self.spec.lm
        return self.steps.final_logits(lm.model.norm, lm.lm_head, hidden)


def projection_groups(layer: nn.Module) -> list[tuple[nn.Module, ...]]:
    """A decoder layer's projections grouped by the input they read: q/k/v, o, gate/up, down (the
    fields of ``LayerFusion``, in order)."""
    attn, mlp = layer.self_attn, layer.mlp
    return [(attn.q_proj, attn.k_proj, attn.v_proj), (attn.o_proj,), (mlp.gate_proj, mlp.up_proj), (mlp.down_proj,)]


def pre_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    qkv: FusedWeights | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A decoder layer up to attention: q, k, v ``[N, heads, head_dim]``, rotary applied (v may be a
    strided view). ``qkv``: the q/k/v weights' fused buffer, for one GEMM instead of three."""
    attn = layer.self_attn
    n, dim = hidden.shape[0], attn.head_dim
    x = layer.input_layernorm(hidden)
    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
    if qkv is None:
        q, k, v = (p(x) for p in projections)
    else:
        q, k, v = fused_forward(qkv, projections, x)
    q, k, v = q.view(n, -1, dim), k.view(n, -1, dim), v.view(n, -1, dim)
    if hasattr(attn, "q_norm"):  # Qwen3 normalizes q and k per head before the rotary embedding
        q, k = attn.q_norm(q), attn.k_norm(k)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


def _project(fused: FusedWeights | None, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x) if fused is None else fused_forward(fused, (module,), x)[0]


def post_attention(
    layer: nn.Module,
    hidden: torch.Tensor,
    attn_out: torch.Tensor,
    gate_up: FusedWeights | None = None,
    o: FusedWeights | None = None,
    down: FusedWeights | None = None,
) -> torch.Tensor:
    """The rest of a decoder layer: output projection, residual, MLP, residual. ``gate_up``: the
    gate/up weights' fused buffer, for one GEMM instead of two; ``o``, ``down``: those projections'
    own (with their stacked adapters)."""
    hidden = hidden + _project(o, layer.self_attn.o_proj, attn_out.reshape(hidden.shape[0], -1))
    x = layer.post_attention_layernorm(hidden)
    mlp = layer.mlp
    if gate_up is None and down is None:
        return hidden + mlp(x)
    if gate_up is None:
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    else:
        gate, up = fused_forward(gate_up, (mlp.gate_proj, mlp.up_proj), x)
    return hidden + _project(down, mlp.down_proj, mlp.act_fn(gate) * up)


def final_logits(norm: nn.Module, lm_head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return lm_head(norm(hidden))


@dataclass(frozen=True)
class LayerSteps:
    """The computation between attention calls, eager or compiled (``picorl.engine.runner.compiled``)."""

    pre_attention: Callable = pre_attention
    post_attention: Callable = post_attention
    final_logits: Callable = final_logits


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding in the half-split convention of the Hugging Face models."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
