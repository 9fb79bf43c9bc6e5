"""Sampling in one pass over the logits (Triton): temperature, Gumbel-max draw, log-prob.

The torch sampler (``sampler.py``) makes ~10 passes over a ``[B, vocab]`` fp32 copy of the logits
(cast, scale, softmax, noise, divide, argmax, log-sum-exp): 1.25 ms per step at 256 x 151,936 on an
H100. Here one program per row streams the row once, in tiles, keeping

- a running max and sum of exp for ``log_softmax(logits / T)`` (the log-prob the trainer recomputes),
- the running argmax of ``logits / T + G`` with ``G`` standard Gumbel noise (greedy: of the logits),

and reads the chosen logit once more at the end. ``argmax(x / T + G)`` draws index i with probability
``softmax(x / T)_i`` (the Gumbel-max trick); G = -log(E), E = -log(U) exponential, U uniform from
Triton's counter-based Philox generator keyed by (seed, row, tile, lane), one call giving the four
uniforms of a lane's four quarters of a tile, so a seed reproduces a draw exactly and rows are
independent. Its integer work bounds the kernel: 0.18 ms at 256 x 151,936 on an H100 (0.06 ms greedy);
splitting rows over more programs gained only 0.016 ms more, not worth a second launch. Top-k / top-p are not handled here (the torch sampler does).
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

    @triton.jit
    def _fold_tile(
        base, col, vocab, temperature, u, m_run, s_run, best_key, best_col, GREEDY: tl.constexpr
    ):  # fmt: skip
        """Fold one tile of a row into the per-lane running max, sum of exp, and best key."""
        ok = col < vocab
        x = tl.load(base + col, mask=ok, other=float("-inf")).to(tl.float32) / temperature
        m_new = tl.maximum(m_run, x)
        # lanes that have seen only -inf keep a sum of 0 (no -inf - -inf = NaN)
        alpha = tl.where(m_new == float("-inf"), 0.0, tl.exp(m_run - m_new))
        s_run = s_run * alpha + tl.where(x == float("-inf"), 0.0, tl.exp(x - m_new))
        if GREEDY:  # noqa: SIM108 (a constexpr branch, resolved at compile time)
            key = x
        else:
            key = x - tl.log(-tl.log(u))  # u = 0 gives key -inf: never drawn
        key = tl.where(ok, key, float("-inf"))
        better = key > best_key  # strict: the first column wins a tie, as torch.argmax
        return m_new, s_run, tl.where(better, key, best_key), tl.where(better, col, best_col)

    @triton.jit(do_not_specialize=["seed"])
    def _sample_kernel(
        logits_ptr, ids_ptr, logprobs_ptr, stride_row, vocab, temperature, seed,
        GREEDY: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        QUARTER: tl.constexpr = BLOCK // 4
        row = tl.program_id(0).to(tl.int64)
        base = logits_ptr + row * stride_row
        lanes = tl.arange(0, QUARTER)
        m_run = tl.full([QUARTER], float("-inf"), tl.float32)  # per-lane running max of x / T
        s_run = tl.zeros([QUARTER], tl.float32)  # per-lane running sum of exp(x / T - m_run)
        best_key = tl.full([QUARTER], float("-inf"), tl.float32)
        best_col = tl.zeros([QUARTER], tl.int32)
        tiles = tl.cdiv(vocab, BLOCK)
        for start in range(0, vocab, BLOCK):
            # One Philox call gives four uniforms, one per quarter of the tile: a quarter of the
            # integer work of one call per entry, which bounded this kernel (0.25 ms at 256 x 151,936).
            if GREEDY:
                u0 = tl.zeros([QUARTER], tl.float32)  # unused: greedy draws no noise
                u1 = u0
                u2 = u0
                u3 = u0
            else:
                u0, u1, u2, u3 = tl.rand4x(seed, (row * tiles + start // BLOCK) * QUARTER + lanes)
            m_run, s_run, best_key, best_col = _fold_tile(base, start + lanes, vocab, temperature, u0, m_run, s_run, best_key, best_col, GREEDY)  # fmt: skip
            m_run, s_run, best_key, best_col = _fold_tile(base, start + QUARTER + lanes, vocab, temperature, u1, m_run, s_run, best_key, best_col, GREEDY)  # fmt: skip
            m_run, s_run, best_key, best_col = _fold_tile(base, start + 2 * QUARTER + lanes, vocab, temperature, u2, m_run, s_run, best_key, best_col, GREEDY)  # fmt: skip
            m_run, s_run, best_key, best_col = _fold_tile(base, start + 3 * QUARTER + lanes, vocab, temperature, u3, m_run, s_run, best_key, best_col, GREEDY)  # fmt: skip
        # merge the lanes: argmax with the lowest column among equal keys
        top = tl.max(best_key, 0)
        chosen = tl.min(tl.where(best_key == top, best_col, vocab), 0)
        m = tl.max(m_run, 0)
        lse = m + tl.log(tl.sum(s_run * tl.exp(m_run - m), 0))
        x_chosen = tl.load(base + chosen).to(tl.float32) / temperature
        tl.store(ids_ptr + row, chosen.to(tl.int64))
        tl.store(logprobs_ptr + row, x_chosen - lse)


def fused_sample(logits: torch.Tensor, temperature: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B]`` (int64) and fp32 log-probs under ``log_softmax(logits / T)``.

    ``temperature == 0`` is greedy (log-probs at T = 1). ``seed`` (0 <= seed < 2**31) keys the noise:
    the same seed and logits give the same draw. ``logits`` ``[B, vocab]`` on CUDA, any float dtype,
    unit stride along the vocabulary.
    """
    if not _HAS_TRITON:
        raise RuntimeError("fused_sample needs Triton; use picorl.engine.sampler.sample")
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
    with torch.cuda.device(logits.device):
        _sample_kernel[(batch,)](
            logits, ids, logprobs, logits.stride(0), vocab, 1.0 if greedy else float(temperature), seed,
            GREEDY=greedy, BLOCK=BLOCK, num_warps=8,
        )  # fmt: skip
    return ids, logprobs
