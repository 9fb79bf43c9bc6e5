"""Data-parallel scaling of ``picorl train`` under torchrun: update time and rollout tokens/s at N ranks.

    PYTHONPATH=. python benchmarks/scaling.py --model smollm2-135m              # N = 1, 2, 4 (GPUs present)
    PYTHONPATH=. python benchmarks/scaling.py --model DIR                       # e.g. a Qwen3-4B-shaped folder:
    PYTHONPATH=. python benchmarks/scaling.py --write-qwen3-4b-shape DIR        #   random bf16 weights, written once
    PYTHONPATH=. python benchmarks/scaling.py --device cpu --model tiny-qwen3 --ranks 1 2 --updates 2   # smoke test

Strong scaling: the same global batch (``--num-tasks``) on N ranks. Weak scaling: ``--per-rank`` groups
per rank (``--num-tasks = per_rank * N``). Each run is a real ``torchrun ... -m picorl.cli train`` with
SFT off; its ``metrics.jsonl`` gives, per update, ``time/update_s`` (the slowest rank's) and the rollout
throughput (the global batch's completion tokens over ``time/rollout_s``). The first update is left
out (compilation, KV-cache sizing); the median of the rest is reported. Efficiency = (sequences per
second at N / N) / (sequences per second at 1 rank): for weak scaling that is t(1) / t(N).

Prints a table, then one last line ``scaling_json={...}`` (every number, parseable).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(ranks: int, num_tasks: int, args: argparse.Namespace, runs_dir: Path, name: str) -> dict[str, float]:
    """One torchrun training run; returns its median update time, rollout tokens/s and sequences/s."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
        "-m", "picorl.cli", "train", "--model", args.model, "--device", args.device,
        "--num-tasks", str(num_tasks), "--k", str(args.k), "--max-tokens", str(args.max_tokens),
        "--num-updates", str(args.updates), "--sft-steps", "0", "--eval-tiers", "1",
        "--eval-num-tasks", str(ranks), "--eval-max-tokens", "8", "--save-every", "0",
        "--plot-interval-s", "100000", "--runs-dir", str(runs_dir), "--name", name, *args.extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if args.device == "cpu":  # torchrun gives each of N > 1 ranks one thread; give N = 1 the same
        env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    rows = [json.loads(line) for line in (runs_dir / name / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    timed = train[1:] or train  # the first update compiles and sizes the KV cache
    sequences = num_tasks * args.k
    update_s = statistics.median(r["time/update_s"] for r in timed)
    rollout_tps = statistics.median(
        r["tokens/completion_mean"] * sequences / r["time/rollout_s"] for r in timed
    )
    return {
        "ranks": ranks,
        "num_tasks": num_tasks,
        "update_s": update_s,
        "rollout_s": statistics.median(r["time/rollout_s"] for r in timed),
        "train_s": statistics.median(r["time/train_s"] for r in timed),
        "rollout_tokens_per_s": rollout_tps,
        "sequences_per_s": sequences / update_s,
    }


def efficiencies(results: list[dict[str, float]]) -> None:
    """Add ``efficiency`` (per-rank sequences/s over the 1-rank run's) and ``speedup`` in place."""
    base = next((r for r in results if r["ranks"] == 1), results[0])
    for r in results:
        r["speedup"] = base["update_s"] / r["update_s"] if r["num_tasks"] == base["num_tasks"] else None
        r["efficiency"] = (r["sequences_per_s"] / r["ranks"]) / (base["sequences_per_s"] / base["ranks"])


def write_qwen3_4b_shape(folder: Path) -> None:
    """A Qwen3-4B-shaped model with random bf16 weights (speed and memory do not depend on the values)
    and tiny-qwen3's tokenizer and chat template (so the vocabulary is that tokenizer's)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    from picorl.models import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
        rope_theta=5e6, max_position_embeddings=40960, torch_dtype="bfloat16",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.set_default_dtype(torch.bfloat16)  # 8 GB of weights, never an fp32 copy
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"wrote {folder}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cuda", help="cuda (one rank per GPU, NCCL) or cpu (gloo)")
    parser.add_argument("--ranks", type=int, nargs="+", help="default: 1, 2, 4 up to the GPUs present")
    parser.add_argument("--num-tasks", type=int, default=16, help="strong scaling: the global groups per update")
    parser.add_argument("--per-rank", type=int, default=8, help="weak scaling: groups per rank")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--updates", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=["strong", "weak"], choices=["strong", "weak"])
    parser.add_argument("--write-qwen3-4b-shape", type=Path, metavar="DIR", help="write the model folder; exit")
    parser.add_argument("extra", nargs="*", help="more `picorl train` flags, after --")
    args = parser.parse_args()
    if args.write_qwen3_4b_shape:
        write_qwen3_4b_shape(args.write_qwen3_4b_shape)
        return
    ranks = args.ranks
    if ranks is None:
        import torch

        gpus = torch.cuda.device_count() if args.device == "cuda" else 1
        ranks = [n for n in (1, 2, 4) if n <= max(gpus, 1)]
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            results[mode] = []
            for n in ranks:
                tasks = args.num_tasks if mode == "strong" else args.per_rank * n
                results[mode].append(run(n, tasks, args, Path(tmp), f"{mode}-{n}"))
            efficiencies(results[mode])
    print(f"model {args.model}, device {args.device}, k {args.k}, max_tokens {args.max_tokens}, "
          f"median of updates 2..{args.updates}")  # fmt: skip
    print(f"{'mode':6} {'N':>2} {'tasks':>5} {'update s':>9} {'rollout s':>9} {'train s':>8} "
          f"{'roll tok/s':>10} {'seq/s':>7} {'speedup':>7} {'eff':>5}")  # fmt: skip
    for mode, rows in results.items():
        for r in rows:
            speedup = f"{r['speedup']:.2f}" if r["speedup"] is not None else "-"
            print(f"{mode:6} {r['ranks']:>2} {r['num_tasks']:>5} {r['update_s']:>9.2f} {r['rollout_s']:>9.2f} "
                  f"{r['train_s']:>8.2f} {r['rollout_tokens_per_s']:>10,.0f} {r['sequences_per_s']:>7.1f} "
                  f"{speedup:>7} {r['efficiency']:>5.2f}")  # fmt: skip
    print("scaling_json=" + json.dumps({"model": args.model, "device": args.device, **results}))


if __name__ == "__main__":
    main()
