"""Paged-attention decode kernel in Triton: one new query token per sequence against its paged KV cache.

Layout (shared with the pure-torch reference in ``attention.py``):
    q            [B, H, D]                       the new token's query heads
    k_cache      [num_blocks, block_size, H_kv, D] (v_cache the same)
    block_tables [B, max_blocks] int32           page ids of each sequence, in order
    context_lens [B] int32                       tokens to attend to (0 = padding row, output 0)

Design, for a memory-bound decode step:
- GQA packing: one program owns one (sequence, KV head) and computes all H / H_kv query heads that
  share it with one tensor-core dot, so each KV page is read from memory once.
- Split-K (flash-decoding): when B * H_kv programs cannot fill the GPU (small batch, long context),
  each sequence's context is cut into ``num_splits`` equal parts computed in parallel, then merged
  by their log-sum-exp in a second small kernel.
- CUDA-graph safe: no host syncs; the grid depends only on tensor shapes. Each split's share is
  computed on the device from ``context_lens``, so replays with new lengths stay balanced.
- The new token's K/V (optional ``new_kv``): the kernel writes them to their cache slot itself and
  attends to them from registers, so a decode step needs no separate cache-write kernels (two
  ``index_copy_`` launches per layer: 0.28 ms of a 19 ms step, Qwen3-4B shape at batch 256 on an
  H100). Reading them back from the cache in the same launch would race.
"""

from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except ImportError:  # CPU-only installs: the engine falls back to the torch attention
    _HAS_TRITON = False

_LOG2_E = 1.4426950408889634


def triton_available() -> bool:
    """True when Triton is importable and a CUDA GPU is present."""
    return _HAS_TRITON and torch.cuda.is_available()


if _HAS_TRITON:

    @triton.jit
    def _paged_decode_kernel(
        q_ptr, k_ptr, v_ptr, tables_ptr, lens_ptr, out_ptr, part_o_ptr, part_lse_ptr,
        k_new_ptr, v_new_ptr, slots_ptr,
        qk_scale, num_heads, num_splits,
        stride_qb, stride_qh,
        stride_kn, stride_kt, stride_kh,
        stride_vn, stride_vt, stride_vh,
        stride_tb,
        stride_ob, stride_oh,
        stride_knb, stride_knh, stride_vnb, stride_vnh,
        GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
        SPLIT: tl.constexpr, IEEE: tl.constexpr, NEW_KV: tl.constexpr,
    ):  # fmt: skip
        kv_head = tl.program_id(0)
        seq = tl.program_id(1)
        split = tl.program_id(2)

        # This split's share of the cached tokens, in whole tiles, from the on-device length. With
        # NEW_KV the last token is not read from the cache: the last split takes it from registers.
        ctx = tl.load(lens_ptr + seq)
        cached = tl.maximum(ctx - 1, 0) if NEW_KV else ctx
        tiles_per_split = tl.cdiv(tl.cdiv(cached, BLOCK_N), num_splits)
        start = split * tiles_per_split * BLOCK_N
        end = tl.minimum(start + tiles_per_split * BLOCK_N, cached)

        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        g_ok = g < GROUP
        d_ok = d < HEAD_DIM
        heads = kv_head * GROUP + g
        q = tl.load(
            q_ptr + seq * stride_qb + heads[:, None] * stride_qh + d[None, :],
            mask=g_ok[:, None] & d_ok[None, :],
            other=0.0,
        )

        m_run = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max, log2 units
        l_run = tl.zeros([BLOCK_G], tl.float32)  # running sum of exp2(s - m_run)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        offs_n = tl.arange(0, BLOCK_N)
        table_row = tables_ptr + seq * stride_tb
        for tile in range(start, end, BLOCK_N):
            tok = tile + offs_n
            tok_ok = tok < end
            # int64: page * stride can pass 2**31 elements in a large cache
            page = tl.load(table_row + tok // PAGE, mask=tok_ok, other=0).to(tl.int64)
            slot = tok % PAGE
            kv_mask = tok_ok[:, None] & d_ok[None, :]
            k = tl.load(
                k_ptr
                + page[:, None] * stride_kn
                + slot[:, None] * stride_kt
                + kv_head * stride_kh
                + d[None, :],
                mask=kv_mask,
                other=0.0,
            )
            if IEEE:  # noqa: SIM108 (a constexpr branch, resolved at compile time)
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = tl.where(tok_ok[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_run, tl.max(s, 1))
            alpha = tl.exp2(m_run - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_run = l_run * alpha + tl.sum(p, 1)
            v = tl.load(
                v_ptr
                + page[:, None] * stride_vn
                + slot[:, None] * stride_vt
                + kv_head * stride_vh
                + d[None, :],
                mask=kv_mask,
                other=0.0,
            )
            if IEEE:  # noqa: SIM108
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_run = m_new

        if NEW_KV:  # noqa: SIM102 (a constexpr branch, resolved at compile time)
            # The new token: store it in its slot, then fold it into the last split's softmax, rounded
            # to the cache's dtype and p rounded as in the tiles, as if it had been read back from the
            # cache. A padding row (context 0) has no token.
            if (split == num_splits - 1) & (ctx > 0):
                k_n = tl.load(k_new_ptr + seq * stride_knb + kv_head * stride_knh + d, mask=d_ok, other=0.0)
                v_n = tl.load(v_new_ptr + seq * stride_vnb + kv_head * stride_vnh + d, mask=d_ok, other=0.0)
                k_n = k_n.to(k_ptr.dtype.element_ty)
                v_n = v_n.to(v_ptr.dtype.element_ty)
                slot = tl.load(slots_ptr + seq)
                page_n = slot // PAGE
                off_n = slot % PAGE
                tl.store(
                    k_ptr + page_n * stride_kn + off_n * stride_kt + kv_head * stride_kh + d, k_n, mask=d_ok
                )
                tl.store(
                    v_ptr + page_n * stride_vn + off_n * stride_vt + kv_head * stride_vh + d, v_n, mask=d_ok
                )
                s_n = tl.sum(q.to(tl.float32) * k_n.to(tl.float32)[None, :], 1) * qk_scale
                m_new = tl.maximum(m_run, s_n)
                alpha = tl.exp2(m_run - m_new)
                p_n = tl.exp2(s_n - m_new)
                l_run = l_run * alpha + p_n
                p_v = p_n.to(v_ptr.dtype.element_ty).to(tl.float32)  # the tiles' dot takes p in v's dtype
                acc = acc * alpha[:, None] + p_v[:, None] * v_n.to(tl.float32)[None, :]
                m_run = m_new

        has_tokens = l_run > 0  # false for an empty split or a padding row (context 0)
        o = acc / tl.where(has_tokens, l_run, 1.0)[:, None]
        mask = g_ok[:, None] & d_ok[None, :]
        if SPLIT:
            row = (seq * num_heads + heads) * num_splits + split
            tl.store(part_o_ptr + row[:, None] * HEAD_DIM + d[None, :], o, mask=mask)
            lse = tl.where(has_tokens, m_run + tl.log2(tl.where(has_tokens, l_run, 1.0)), float("-inf"))
            tl.store(part_lse_ptr + row, lse, mask=g_ok)
        else:
            out = o.to(out_ptr.dtype.element_ty)
            tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + d[None, :], out, mask=mask)

    @triton.jit
    def _merge_splits_kernel(
        part_o_ptr, part_lse_ptr, out_ptr, num_heads, num_splits, stride_ob, stride_oh,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    ):  # fmt: skip
        seq = tl.program_id(0)
        head = tl.program_id(1)
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, BLOCK_D)
        s_ok = s < num_splits
        row = (seq * num_heads + head) * num_splits + s
        lse = tl.load(part_lse_ptr + row, mask=s_ok, other=float("-inf"))
        top = tl.max(lse, 0)
        top = tl.where(top == float("-inf"), 0.0, top)  # every split empty: weights all 0, no NaN
        w = tl.exp2(lse - top)
        o = tl.load(
            part_o_ptr + row[:, None] * HEAD_DIM + d[None, :], mask=s_ok[:, None] & (d < HEAD_DIM)[None, :]
        )
        total = tl.sum(w, 0)
        out = tl.sum(w[:, None] * o, 0) / tl.where(total > 0, total, 1.0)
        tl.store(
            out_ptr + seq * stride_ob + head * stride_oh + d,
            out.to(out_ptr.dtype.element_ty),
            mask=d < HEAD_DIM,
        )


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _auto_num_splits(programs: int, max_context: int, block_n: int, device: torch.device) -> int:
    """Enough splits to give every SM a few programs, never more than there are tiles to split."""
    target = 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    if programs >= target:
        return 1
    max_tiles = max(1, triton.cdiv(max_context, block_n))
    return max(1, min(triton.cdiv(target, programs), max_tiles // 4, 64))  # >= 4 tiles a split


def _check_inputs(q, k_cache, v_cache, block_tables, context_lens) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            "expected q [B, H, D] and k_cache, v_cache [num_blocks, block_size, H_kv, D] of one shape; got "
            f"q {tuple(q.shape)}, k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}"
        )
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim or num_heads % num_kv_heads:
        raise ValueError(
            f"q has {num_heads} heads of dim {head_dim}; the cache has {num_kv_heads} KV heads of dim "
            f"{k_cache.shape[3]}: head dims must match and H must be a multiple of H_kv"
        )
    if not (q.dtype == k_cache.dtype == v_cache.dtype) or q.dtype not in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
    ):
        raise TypeError(
            f"q, k_cache, v_cache must share one of fp16/bf16/fp32; got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    if block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32:
        raise TypeError("block_tables and context_lens must be int32 (convert once with .to(torch.int32))")
    if block_tables.dim() != 2 or block_tables.shape[0] != batch or context_lens.shape != (batch,):
        raise ValueError(f"need block_tables [{batch}, max_blocks] and context_lens [{batch}]")
    if any(t.device.type != "cuda" for t in (q, k_cache, v_cache, block_tables, context_lens)):
        raise ValueError("paged_decode_attention runs on CUDA tensors only; use the torch attention on CPU")
    if (
        q.stride(-1) != 1
        or k_cache.stride(-1) != 1
        or v_cache.stride(-1) != 1
        or block_tables.stride(-1) != 1
    ):
        raise ValueError("q, k_cache, v_cache and block_tables need a contiguous last dimension")


def _check_new_kv(k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, shape: tuple[int, int, int]) -> None:
    if tuple(k.shape) != shape or tuple(v.shape) != shape:
        raise ValueError(
            f"new_kv: k and v must be [B, H_kv, D] = {shape}; got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("new_kv: k and v need a contiguous last dimension")
    if slots.shape != (shape[0],) or slots.dtype != torch.int64 or slots.device != k.device:
        raise ValueError(
            f"new_kv: slots must be int64 [{shape[0]}] on {k.device}; got {slots.dtype} {tuple(slots.shape)}"
        )


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    *,
    new_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """Attention of one query token per sequence over its paged KV cache; returns [B, H, D] in q's dtype.

    Accumulates in fp32. ``context_lens[b]`` must not exceed ``max_blocks * block_size``; a length of 0
    gives a zero output row (CUDA-graph padding). ``new_kv = (k, v, slots)`` (``k, v [B, H_kv, D]``,
    ``slots [B]`` int64 flat cache slots) are this step's tokens, the last of each context: the kernel
    stores them in the cache and attends to them without reading them back, which gives what
    ``store_kv`` followed by the call without ``new_kv`` gives. ``out`` (optional, [B, H, D]) receives
    the result, which helps static buffers in CUDA graphs. ``num_splits`` overrides the split-K choice, and
    ``block_n`` (tokens per tile), ``num_warps``, ``num_stages`` tune the kernel. Warm up once before
    capturing a CUDA graph: the first call compiles.
    """
    if not _HAS_TRITON:
        raise RuntimeError(
            "paged_decode_attention needs Triton (pip install triton); use the torch attention"
        )
    _check_inputs(q, k_cache, v_cache, block_tables, context_lens)
    batch, num_heads, head_dim = q.shape
    _, page, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.stride(-1) != 1:
        raise ValueError(f"out must be [B, H, D] = {tuple(q.shape)} with a contiguous last dimension")
    if batch == 0:
        return out
    if new_kv is None:
        k_new = v_new = q  # unused by the kernel when NEW_KV is false
        slots = context_lens
    else:
        k_new, v_new, slots = new_kv
        _check_new_kv(k_new, v_new, slots, (batch, num_kv_heads, head_dim))
    if num_splits is None:
        num_splits = _auto_num_splits(batch * num_kv_heads, block_tables.shape[1] * page, block_n, q.device)
    split = num_splits > 1
    block_d = triton.next_power_of_2(head_dim)
    if split:
        part_o = torch.empty(batch, num_heads, num_splits, head_dim, device=q.device, dtype=torch.float32)
        part_lse = torch.empty(batch, num_heads, num_splits, device=q.device, dtype=torch.float32)
    else:
        part_o = part_lse = out  # unused by the kernel when SPLIT is false
    with torch.cuda.device(q.device):
        _paged_decode_kernel[(num_kv_heads, batch, num_splits)](
            q, k_cache, v_cache, block_tables, context_lens, out, part_o, part_lse,
            k_new, v_new, slots,
            scale * _LOG2_E, num_heads, num_splits,
            q.stride(0), q.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            block_tables.stride(0),
            out.stride(0), out.stride(1),
            k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
            GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)),
            HEAD_DIM=head_dim, BLOCK_D=max(16, block_d),
            PAGE=page, BLOCK_N=block_n,
            SPLIT=split, IEEE=q.dtype == torch.float32, NEW_KV=new_kv is not None,
            num_warps=num_warps, num_stages=num_stages,
        )  # fmt: skip
        if split:
            _merge_splits_kernel[(batch, num_heads)](
                part_o, part_lse, out, num_heads, num_splits, out.stride(0), out.stride(1),
                HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=max(2, triton.next_power_of_2(num_splits)),
                num_warps=1,
            )  # fmt: skip
    return out
