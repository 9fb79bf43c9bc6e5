"""Sampling with one pass over the logits (Triton): temperature, an exact draw, its log-prob.

The torch sampler (``sampler.py``) makes ~10 passes over a ``[B, vocab]`` fp32 copy of the logits
(cast, scale, softmax, noise, divide, argmax, log-sum-exp): 1.25 ms per step at 256 x 151,936 on an
H100. Here one program per row streams the row once, in tiles, keeping each tile's max and sum of
exp of ``x / T`` (which give ``log_softmax(logits / T)``, the log-prob the trainer recomputes), then
draws by inverting the CDF at one uniform per row: the per-tile sums pick the tile, a cumulative
sum inside that one tile picks the column. The uniform comes from Triton's counter-based Philox
generator keyed by (seed, row), so a seed reproduces a draw exactly and rows are independent.
A Gumbel-max draw needs a uniform and two logarithms per vocabulary entry instead: its integer
work made that kernel 0.18-0.25 ms a step at 256 x 151,936 (H100). Greedy takes the argmax (the
first column among equal maxima). Top-k / top-p are not handled here (the torch sampler does).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except ImportError:  # CPU-only installs sample with torch
    _HAS_TRITON = False

BLOCK = 4096  # vocabulary entries a program holds per tile


def fused_sampling_available(device: torch.device) -> bool:
    """True when the kernel can run on ``device`` (Triton importable, a CUDA device)."""
    return _HAS_TRITON and device.type == "cuda"


if _HAS_TRITON:

    @triton.jit(do_not_specialize=["seed"])
    def _sample_kernel(
        logits_ptr, ids_ptr, logprobs_ptr, stride_row, vocab, temperature, seed,
        GREEDY: tl.constexpr, BLOCK: tl.constexpr, MAX_TILES: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * stride_row
        cols = tl.arange(0, BLOCK)
        tile_ids = tl.arange(0, MAX_TILES)
        # Pass 1, over the whole row: each tile's max and sum of exp (relative to that max) of x / T,
        # kept in registers indexed by tile; greedy also keeps the argmax.
        tile_max = tl.full([MAX_TILES], float("-inf"), tl.float32)
        tile_sum = tl.zeros([MAX_TILES], tl.float32)
        best = float("-inf")
        best_col = 0
        for start in range(0, vocab, BLOCK):
            tile = start // BLOCK
            col = start + cols
            x = tl.load(base + col, mask=col < vocab, other=float("-inf")).to(tl.float32) / temperature
            top = tl.max(x, 0)
            total = tl.sum(tl.exp(x - tl.where(top == float("-inf"), 0.0, top)), 0)
            tile_max = tl.where(tile_ids == tile, top, tile_max)
            tile_sum = tl.where(tile_ids == tile, total, tile_sum)
            if GREEDY:
                # the first column among equal maxima, as torch.argmax
                at = tl.min(tl.where(x == top, col, vocab), 0)
                better = top > best
                best_col = tl.where(better, at, best_col)
                best = tl.where(better, top, best)
        m = tl.max(tile_max, 0)
        weight = tl.where(tile_max == float("-inf"), 0.0, tile_sum * tl.exp(tile_max - m))
        z = tl.sum(weight, 0)  # sum of exp(x / T - m) over the row
        if GREEDY:
            chosen = best_col
        else:
            # Pass 2, over one tile: invert the CDF at u * z. The tile comes from the per-tile weights,
            # the column from a cumulative sum within it. Rounding can leave the target just past
            # the last column with weight: that column is taken.
            target = tl.rand(seed, row) * z
            prefix = tl.cumsum(weight, 0)
            last_tile = tl.max(tl.where(weight > 0, tile_ids, 0), 0)
            picked = tl.minimum(tl.min(tl.where(prefix > target, tile_ids, MAX_TILES), 0), last_tile)
            before = tl.sum(tl.where(tile_ids < picked, weight, 0.0), 0)
            in_tile = picked * BLOCK + cols
            x_tile = tl.load(base + in_tile, mask=in_tile < vocab, other=float("-inf")).to(tl.float32)
            e = tl.exp(x_tile / temperature - m)
            running = before + tl.cumsum(e, 0)
            last_col = tl.max(tl.where(e > 0, in_tile, 0), 0)
            chosen = tl.minimum(tl.min(tl.where(running > target, in_tile, vocab), 0), last_col)
        x_chosen = tl.load(base + chosen).to(tl.float32) / temperature
        tl.store(ids_ptr + row, chosen.to(tl.int64))
        tl.store(logprobs_ptr + row, x_chosen - m - tl.log(z))


def fused_sample(logits: torch.Tensor, temperature: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B]`` (int64) and fp32 log-probs under ``log_softmax(logits / T)``.

    ``temperature == 0`` is greedy (log-probs at T = 1). ``seed`` (0 <= seed < 2**31) keys the noise:
    the same seed and logits give the same draw. ``logits`` ``[B, vocab]`` on CUDA, any float dtype,
    unit stride along the vocabulary.
    """
    if not _HAS_TRITON:
        raise RuntimeError("fused_sample needs Triton; use picorl.engine.layers.sampler.sample")
    if logits.dim() != 2 or logits.stride(1) != 1 or logits.device.type != "cuda":
        raise ValueError(
            f"fused_sample needs CUDA logits [B, vocab] with unit vocabulary stride; got {tuple(logits.shape)} "
            f"with strides {logits.stride()} on {logits.device}"
        )
    if not 0 <= seed < 2**31:
        raise ValueError(f"seed must be in [0, 2**31), got {seed}")
    batch, vocab = logits.shape
    ids = torch.empty(batch, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(batch, dtype=torch.float32, device=logits.device)
    if batch == 0:
        return ids, logprobs
    greedy = temperature == 0
    max_tiles = max(2, triton.next_power_of_2(triton.cdiv(vocab, BLOCK)))
    with torch.cuda.device(logits.device):
        _sample_kernel[(batch,)](
            logits, ids, logprobs, logits.stride(0), vocab, 1.0 if greedy else float(temperature), seed,
            GREEDY=greedy, BLOCK=BLOCK, MAX_TILES=max_tiles, num_warps=8,
        )  # fmt: skip
    return ids, logprobs
