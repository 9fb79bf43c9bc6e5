"""Where one decode step's time goes: the kernels of a case-B decode-graph replay (run on a GPU machine).

    PYTHONPATH=. python benchmarks/decode_profile.py        # Qwen3-4B shape, batch 256, context ~1024

Fills the engine's KV cache with 256 prompts of 1016 tokens, decodes 8 tokens (which leaves the
batch-256 graph's inputs at context ~1024), then replays that graph under the PyTorch profiler and
prints each kernel's time per replay, grouped into attention, matrix products, compiled (Inductor)
kernels and the rest, against the replay's own time (the difference is launch gaps in the graph).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from engine import engine_tokens, random_prompts, random_qwen3_4b  # noqa: E402

from picorl.engine import EngineConfig, LLMEngine  # noqa: E402

CATEGORIES = {  # first match wins, on the lower-cased kernel name
    "attention": ("paged_decode",),
    "matrix products": ("gemm", "nvjet", "xmma", "cutlass", "splitk"),
    "compiled (Inductor)": ("triton_",),
}


def category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES.items() if any(k in low for k in keys)), "other")


def replay_ms(graph: torch.cuda.CUDAGraph, repeats: int = 50) -> float:
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    torch.manual_seed(0)
    engine = LLMEngine(
        random_qwen3_4b(),
        config=EngineConfig(
            max_num_seqs=256, max_num_batched_tokens=16384, max_model_len=1152, kv_cache_fraction=0.8
        ),
    )
    engine_tokens(engine, random_prompts(256, 1016, engine.spec.vocab_size, 3), 8)
    graph = engine.graphs.graphs[256]
    wall = replay_ms(graph)
    replays = 5
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name][0] += 1
            per_kernel[event.name][1] += event.time_range.elapsed_us()
    by_category: dict[str, float] = defaultdict(float)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: batch 256, context ~1024")
    for name, (count, us) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1]):
        by_category[category(name)] += us / replays / 1e3
        print(f"{us / replays:9.1f} us  x{count // replays:4d}  {name[:100]}")
    kernels = sum(by_category.values())
    print(f"replay {wall:.3f} ms = kernels {kernels:.3f} ms + gaps {wall - kernels:.3f} ms")
    print("; ".join(f"{cat} {ms:.3f} ms" for cat, ms in sorted(by_category.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
