"""What the train step's attention costs per SDPA backend, on a length seen for the first time and on
one seen before (run on a GPU machine).

    PYTHONPATH=. python benchmarks/sdpa_backends.py

The train step calls SDPA causally on right-padded rows with grouped K/V heads (no mask:
``picorl.train.logprobs.chosen_token_logprobs``), at a length that changes with every micro-batch.
Each backend (cuDNN, flash, memory-efficient) runs forward + backward at a run of new lengths (the
first call at a length: cuDNN builds an execution plan per shape) and then again at the same lengths
(plans cached); the table gives the median milliseconds of each. Shapes: SmolLM2-135M (9 heads, 3
K/V heads of 64) and Qwen3-4B (32 heads, 8 K/V heads of 128), at the benchmark's micro-batch sizes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.attention import sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

from picorl.train.step_options import SDPA_KERNELS

# the fused kernels, named as train.train_attention names them (math would only time a slow fallback)
BACKENDS = {name: SDPA_KERNELS[name] for name in ("cudnn", "flash", "efficient")}
SHAPES = {  # name: (rows, heads, kv heads, head dim, first length)
    "smollm2": (64, 9, 3, 64, 160),
    "4b_512": (16, 32, 8, 128, 620),
    "4b_2048": (16, 32, 8, 128, 2160),
}


def step(rows, heads, kv_heads, dim, length, device) -> float:
    """Seconds of one causal forward + backward at ``length`` (grouped K/V, bf16)."""
    q = torch.randn(rows, heads, length, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(rows, kv_heads, length, dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    out.backward(torch.ones_like(out))
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, default=8, help="new lengths per shape and backend")
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    print("| shape | backend | new length ms (median) | seen length ms (median) |\n|---|---|---|---|")
    offset = 0
    for shape, (rows, heads, kv_heads, dim, first) in SHAPES.items():
        for name, backend in BACKENDS.items():
            offset += args.lengths + 1  # lengths no backend has seen yet
            lengths = [first + offset + i for i in range(args.lengths)]
            try:
                with sdpa_kernel([backend]):
                    step(rows, heads, kv_heads, dim, first, device)  # loads the backend's kernels
                    new = [step(rows, heads, kv_heads, dim, n, device) for n in lengths]
                    seen = [step(rows, heads, kv_heads, dim, n, device) for n in lengths]
            except RuntimeError as e:  # a backend that cannot run this shape
                print(f"| {shape} | {name} | not available: {str(e).splitlines()[0][:80]} | |")
                continue
            print(f"| {shape} | {name} | {1e3 * statistics.median(new):.2f} | {1e3 * statistics.median(seen):.2f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
