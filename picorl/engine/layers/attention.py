"""Attention over the paged KV cache; everything else in the model runs the model's own modules.

Shapes: tokens are flattened across sequences, ``q [N, heads, head_dim]`` and ``k, v [N, kv_heads,
head_dim]``; each layer's cache is ``[num_blocks + 1, block_size, kv_heads, head_dim]``.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

# A prefill bucket pads its sequences to its longest; a sequence joins the bucket while the padded
# size stays within this factor of the real tokens (fewer, larger SDPA calls vs wasted compute).
PAD_SLACK = 1.25


class DecodeAttention(Protocol):
    """One decode step's attention: :func:`paged_decode_attention_torch` or the Triton kernel
    (``picorl.engine.layers.triton_decode.paged_decode_attention``). ``new_kv = (k, v, slots)``: this step's
    K/V (``[B, kv_heads, head_dim]``), stored at ``slots`` before they are attended to."""

    def __call__(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
        *,
        new_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor: ...


def store_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor
) -> None:
    """Write token i's K/V to flat slot ``slots[i]`` (= block id * block_size + offset)."""
    k_cache.view(-1, *k_cache.shape[2:]).index_copy_(0, slots, k.to(k_cache.dtype))
    v_cache.view(-1, *v_cache.shape[2:]).index_copy_(0, slots, v.to(v_cache.dtype))


def prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: list[int], scale: float
) -> torch.Tensor:
    """Causal self-attention within each of the concatenated sequences (each starts at position 0).

    Sequences of similar length run as one right-padded SDPA batch: with a causal mask a real query
    only sees keys at or before it, which are all real, so no padding mask is needed and the fast
    SDPA backends stay available.
    """
    out = torch.empty_like(q)
    starts = [0]
    for n in seq_lens[:-1]:
        starts.append(starts[-1] + n)
    for bucket in _buckets(seq_lens):
        lens = [seq_lens[i] for i in bucket]
        if len(bucket) == 1:
            s, n = starts[bucket[0]], lens[0]
            out[s : s + n] = _sdpa(q[s : s + n][None], k[s : s + n][None], v[s : s + n][None], scale)[0]
            continue
        device = q.device
        t = torch.arange(max(lens), device=device)
        lens_t = torch.tensor(lens, device=device)
        starts_t = torch.tensor([starts[i] for i in bucket], device=device)
        index = starts_t[:, None] + torch.minimum(t[None], lens_t[:, None] - 1)  # pad with the last token
        real = t[None] < lens_t[:, None]
        out[index[real]] = _sdpa(q[index], k[index], v[index], scale)[real]
    return out


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """[B, T, heads, D] in and out."""
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    gqa = q.shape[1] != k.shape[1]
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    return o.transpose(1, 2)


def _buckets(seq_lens: list[int]) -> list[list[int]]:
    order = sorted(range(len(seq_lens)), key=lambda i: -seq_lens[i])
    buckets: list[list[int]] = []
    real = 0
    for i in order:
        if buckets and seq_lens[buckets[-1][0]] * (len(buckets[-1]) + 1) <= PAD_SLACK * (real + seq_lens[i]):
            buckets[-1].append(i)
            real += seq_lens[i]
        else:
            buckets.append([i])
            real = seq_lens[i]
    return buckets


def paged_decode_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    new_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One query token per sequence against its cached keys: ``q [B, H, D]`` -> ``[B, H, D]``.

    ``block_tables [B, max_blocks]`` (int32) lists each sequence's blocks (entries past its context
    may be any valid block id); ``context_lens [B]`` (int32, >= 1) counts its cached tokens,
    including the current one. ``new_kv = (k, v, slots)`` are stored (``store_kv``) first. The
    reference for the Triton kernel; gathers every listed block.
    """
    if new_kv is not None:
        k_new, v_new, slots = new_kv
        store_kv(k_cache, v_cache, k_new, v_new, slots)
    batch, heads, dim = q.shape
    _, block_size, kv_heads, _ = k_cache.shape
    length = block_tables.shape[1] * block_size
    tables = block_tables.long()
    k = k_cache[tables].view(batch, length, kv_heads, dim).float()
    v = v_cache[tables].view(batch, length, kv_heads, dim).float()
    past_end = torch.arange(length, device=q.device)[None] >= context_lens[:, None]
    v.masked_fill_(past_end[:, :, None, None], 0.0)  # a gathered copy; unwritten cache memory may hold NaNs
    qg = q.view(batch, kv_heads, heads // kv_heads, dim).float()
    scores = torch.einsum("bkgd,btkd->bkgt", qg, k) * scale
    scores.masked_fill_(past_end[:, None, None], float("-inf"))
    out = torch.einsum("bkgt,btkd->bkgd", scores.softmax(dim=-1), v)
    return out.reshape(batch, heads, dim).to(q.dtype)


def decode_attention_backend(name: str, device: torch.device) -> DecodeAttention:
    """``torch``, ``triton`` (``picorl.engine.layers.triton_decode``), or ``auto``: Triton on CUDA when available."""
    if name == "torch" or (name == "auto" and device.type != "cuda"):
        return paged_decode_attention_torch
    from picorl.engine.layers.triton_decode import paged_decode_attention, triton_available

    if triton_available() and device.type == "cuda":
        return paged_decode_attention
    if name == "triton":
        raise ValueError(
            f"decode_attention='triton' needs Triton and a CUDA device (model on {device}); use 'auto' or 'torch'"
        )
    return paged_decode_attention_torch
