"""Where one decode step's time goes: the kernels of a case-B decode-graph replay (run on a GPU machine).

    PYTHONPATH=. python benchmarks/decode_profile.py        # Qwen3-4B shape, batch 256, context ~1024
    # SmolLM2 as an RL update runs it: batch 64, LoRA r=32 unmerged, bf16 adapter copies
    PYTHONPATH=. python benchmarks/decode_profile.py --model smollm2-135m --batch 64 --prompt-len 120 --lora-rank 32

Fills the engine's KV cache with ``--batch`` prompts of ``--prompt-len`` tokens, decodes 8 tokens
(which leaves the batch's graph inputs at context prompt + 8), then replays that graph under the
PyTorch profiler and prints each kernel's time per replay, grouped into attention, matrix products,
compiled (Inductor) kernels and the rest, against the replay's own time (the difference is launch
gaps in the graph), and the engine's own decode step (host work included) beside it.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from engine import engine_tokens, load_model, random_prompts, with_lora  # noqa: E402

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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="qwen3-4b-random", help="qwen3-4b-random | smollm2-135m")
    parser.add_argument("--batch", type=int, default=256, help="sequences decoding together")
    parser.add_argument("--prompt-len", type=int, default=1016)
    parser.add_argument("--lora-rank", type=int, default=0, help="PEFT LoRA on all linear layers, unmerged")
    parser.add_argument("--adapter-dtype", default="model", help="model (bf16, the default) | adapter (fp32)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = with_lora(load_model(args.model), args.lora_rank)
    engine = LLMEngine(
        model,
        config=EngineConfig(
            max_num_seqs=256,
            max_num_batched_tokens=16384,
            max_model_len=args.prompt_len + 136,
            kv_cache_fraction=0.8,
            adapter_dtype=args.adapter_dtype,
        ),
    )
    prompts = random_prompts(args.batch, args.prompt_len, engine.spec.vocab_size, 3)
    engine_tokens(engine, prompts, 8)
    step_ms = 1e3 * engine.last_stats["decode_s"] / engine.last_stats["decode_steps"]
    graph = engine.graphs.graphs[args.batch]
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
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}: {args.model}, LoRA r={args.lora_rank} "
        f"({args.adapter_dtype}), batch {args.batch}, context ~{args.prompt_len + 8}"
    )
    launches = 0
    for name, (count, us) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1]):
        by_category[category(name)] += us / replays / 1e3
        launches += count // replays
        print(f"{us / replays:9.1f} us  x{count // replays:4d}  {name[:100]}")
    kernels = sum(by_category.values())
    print(
        f"replay {wall:.3f} ms = kernels {kernels:.3f} ms + gaps {wall - kernels:.3f} ms; {launches} kernels a replay"
    )
    print("; ".join(f"{cat} {ms:.3f} ms" for cat, ms in sorted(by_category.items(), key=lambda kv: -kv[1])))
    print(f"engine decode step (8 new tokens, host work and sampling included): {step_ms:.3f} ms")


if __name__ == "__main__":
    main()
