"""The decode step's matrix products alone, per projection and per way of running them (GPU machine).

    PYTHONPATH=. python benchmarks/decode_gemm.py                      # Qwen3-4B shape, batch 64 and 256
    PYTHONPATH=. python benchmarks/decode_gemm.py --ways cublas,transposed --batch 64
    PYTHONPATH=. python benchmarks/decode_gemm.py --tiny --device cpu  # a smoke test of the code

Why: at batch 64 (an RL update's 8 x 8 rollouts) the engine's decode step of the Qwen3-4B shape is
weight-bound, and its GEMMs took 3.97 ms of an 8.48 ms graph replay on an H100, 0.60 of the time
their bytes need at peak bandwidth (``decode_profile.py --batch 64 --prompt-len 1100 --lora-rank 32``,
2026-12-08). This times each of the engine's products on its own, with every layer's weights distinct
(as in the model: 36 layers' worth, far beyond L2), in one CUDA graph per projection, so the ways of
running the same product can be compared without the rest of the step:

- ``cublas``: ``F.linear(x, W)``, what the engine runs (cuBLAS picks the kernel);
- ``transposed``: ``(W @ x.T).T``, the other operand order (cuBLAS picks other kernels; the output is
  a transposed view, as a caller would read it);
- ``autotune``: ``torch.compile(mode="max-autotune-no-cudagraphs")`` of ``x @ W.T`` at this exact
  shape: Inductor benchmarks its Triton GEMM templates against cuBLAS and keeps the fastest.

Products, per decoder layer, as the engine runs them with LoRA r folded (``fused_linear``): q/k/v with
the three adapters' A rows below the weights, o with one A, gate/up with two, down with one; then
each group's B product (``h @ B.T``, rank r per adapter) added to the base outputs; and once per step
the output head. Bytes counted: the weight, the input and the output, once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from decode_profile import replay_ms  # noqa: E402
from engine import PEAK_BYTES_PER_S  # noqa: E402


@dataclass(frozen=True)
class Dims:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: int


QWEN3_4B = Dims(hidden=2560, intermediate=9728, heads=32, kv_heads=8, head_dim=128, vocab=151936, layers=36)
TINY = Dims(hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=256, layers=3)


def products(d: Dims, rank: int) -> dict[str, tuple[int, int, int]]:
    """name: (out features N, in features K, copies) of each product one decode step runs."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    per_layer = {
        "qkv+A": (q + 2 * kv + 3 * rank, d.hidden),
        "o+A": (d.hidden + rank, q),
        "gate_up+A": (2 * d.intermediate + 2 * rank, d.hidden),
        "down+A": (d.hidden + rank, d.intermediate),
    }
    if rank:
        per_layer |= {
            "qkv B": (q + 2 * kv, 3 * rank),
            "o B": (d.hidden, rank),
            "gate_up B": (2 * d.intermediate, 2 * rank),
            "down B": (d.hidden, rank),
        }
    out = {name: (n, k, d.layers) for name, (n, k) in per_layer.items()}
    out["lm_head"] = (d.vocab, d.hidden, 1)
    return out


def way(name: str):
    """The function ``(x [M, K], w [N, K]) -> [M, N]`` that runs a product the way ``name`` says."""
    if name == "cublas":
        return F.linear
    if name == "transposed":
        return lambda x, w: (w @ x.T).T
    if name == "autotune":  # one graph per shape: lift the recompile limit, or later shapes run eagerly
        config = torch._dynamo.config
        limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, limit, max(getattr(config, limit), 256))
        return torch.compile(lambda x, w: x @ w.T, mode="max-autotune-no-cudagraphs", dynamic=False)
    raise SystemExit(f"unknown way {name!r}: cublas | transposed | autotune")


def time_product(fn, batch: int, n: int, k: int, copies: int, device, dtype, repeats: int) -> float:
    """Seconds of one product, the mean over ``copies`` distinct weights run back to back."""
    x = torch.randn(batch, k, device=device, dtype=dtype)
    weights = [torch.randn(n, k, device=device, dtype=dtype) * k**-0.5 for _ in range(copies)]
    for w in weights[:2]:
        fn(x, w)  # compiles / autotunes (one shape, so once)

    def run():
        for w in weights:
            fn(x, w)

    if device.type != "cuda":  # CPU smoke test: plain wall time
        import time

        start = time.perf_counter()
        for _ in range(repeats):
            run()
        return (time.perf_counter() - start) / repeats / copies
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # warm-up on the capture stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    return statistics.median(replay_ms(graph, repeats) / 1e3 / copies for _ in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", default="64,256", help="comma-separated decode batch sizes (rows M)")
    parser.add_argument(
        "--ways", default="cublas,transposed,autotune", help="comma-separated: cublas, transposed, autotune"
    )
    parser.add_argument("--lora-rank", type=int, default=32, help="r of every adapter (0: no LoRA)")
    parser.add_argument("--repeats", type=int, default=20, help="graph replays per measurement")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: a CPU smoke test of this script")
    args = parser.parse_args()
    device = torch.device(args.device)
    dims = TINY if args.tiny else QWEN3_4B
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ways = args.ways.split(",")
    fns = {name: way(name) for name in ways}
    peak = None
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        peak = next((bw for key, bw in PEAK_BYTES_PER_S.items() if key in gpu), None)
        print(f"{gpu}, torch {torch.__version__}; peak bandwidth {peak or 'unknown'} B/s")
    size = torch.tensor([], dtype=dtype).element_size()
    for batch in (int(b) for b in args.batch.split(",")):
        print(f"\nbatch {batch}, LoRA r={args.lora_rank}: us per product (fraction of the bandwidth bound)")
        print("| product | N x K | copies | " + " | ".join(ways) + " |")
        print("|---|---|---|" + "---|" * len(ways))
        totals = dict.fromkeys(ways, 0.0)
        bound_total = 0.0
        for name, (n, k, copies) in products(dims, args.lora_rank).items():
            bound = (n * k + batch * (n + k)) * size / peak if peak else None
            cells = []
            for w in ways:
                s = time_product(fns[w], batch, n, k, copies, device, dtype, args.repeats)
                totals[w] += s * copies
                cells.append(f"{1e6 * s:.1f}" + (f" ({bound / s:.2f})" if bound else ""))
            bound_total += (bound or 0.0) * copies
            print(f"| {name} | {n} x {k} | {copies} | " + " | ".join(cells) + " |", flush=True)
        summary = ", ".join(f"{w} {1e3 * t:.3f} ms" for w, t in totals.items())
        print(f"one decode step's products at batch {batch}: {summary}"
              + (f"; bound {1e3 * bound_total:.3f} ms" if peak else ""))  # fmt: skip


if __name__ == "__main__":
    main()
