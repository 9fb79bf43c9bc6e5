"""A small run folder written the way the trainer writes one, with answers whose correctness we choose.

The tiny random models never answer right, so a real tiny run cannot show the browser's correct /
incorrect / zero-variance filters at work; these rows are built from the real environment instead
(prompts from ``reset``, rewards and ``info`` from ``step``), in the trainer's ``sample_row`` shape.
"""

from __future__ import annotations

import json
from pathlib import Path

from picorl.config import build_config, dump_toml
from picorl.envs.letter_counting import LetterCounting, answer_text
from picorl.logging.metrics import MetricsLogger

XSS = "</script><script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"


def episode_row(update: int, group: int, seed: int, completion: str, kind: str = "train", **extra) -> dict:
    env = LetterCounting(difficulty=[1, 2])
    prompt = env.reset(seed)
    result = env.step(completion)
    return {
        "update": update, "kind": kind, "group": group, "task_seed": seed, "prompt": prompt,
        "completion": completion, "reward": result.reward, "correct": bool(result.info["correct"]),
        "completion_tokens": len(completion.split()), "finish_reason": "stop", "advantage": None,
        "tier": result.info["tier"], "expected": result.info["expected"], "parsed": result.info["parsed"],
        **extra,
    }  # fmt: skip


def right(seed: int) -> str:
    return "Counting...\n" + answer_text(LetterCounting(difficulty=[1, 2]).task_for_seed(seed))


def write_run(run_dir: Path) -> dict:
    """Two updates of 3 groups x k=4 and two evals of 3 tasks. Returns what was written, by design:
    group (update 1, 0) all correct (zero variance), (1, 1) mixed, (1, 2) all wrong the same way
    (zero variance), update 2 mixed everywhere; one completion tries to inject HTML."""
    run_dir.mkdir(parents=True)
    config = build_config({"model": {"model": "tiny-qwen3"}, "env": {"train_difficulty": [1, 2]}})
    (run_dir / "config.toml").write_text(dump_toml(config))
    samples = []
    for update in (1, 2):
        for group in range(3):
            seed = 1000 * update + group
            if update == 1 and group == 0:
                answers = [right(seed)] * 4
            elif update == 1 and group == 2:
                answers = ["no idea"] * 4
            else:
                answers = [right(seed), "<answer>99</answer>", XSS, right(seed)]
            rows = [episode_row(update, group, seed, a) for a in answers]
            mean = sum(r["reward"] for r in rows) / 4
            for r in rows:
                r["advantage"] = r["reward"] - mean
            samples += rows
    evals = []
    for step in (0, 2):
        for i, seed in enumerate((7001, 7002, 7003)):
            answer = right(seed) if step == 2 and i < 2 else "<answer>0</answer>"
            evals.append(episode_row(step, i, seed, answer, kind="eval"))
    with MetricsLogger(run_dir, run_name=run_dir.name, config={}) as log:
        log.log(0, {"eval/tier1/accuracy": 0.0, "eval/tier1/accuracy_low": 0.0,
                    "eval/tier1/accuracy_high": 0.56, "eval/tier1/n": 3.0}, kind="eval")  # fmt: skip
        log.log_samples([r for r in evals if r["update"] == 0])
        for update in (1, 2):
            log.log(update, {"reward/mean": 0.5, "loss/policy": 0.1})
            log.log_samples([r for r in samples if r["update"] == update])
        log.log(2, {"eval/tier1/accuracy": 2 / 3, "eval/tier1/accuracy_low": 0.21,
                    "eval/tier1/accuracy_high": 0.94, "eval/tier1/n": 3.0}, kind="eval")  # fmt: skip
        log.log_samples([r for r in evals if r["update"] == 2])
    return {"samples": samples, "evals": evals}


def write_eval_samples_file(run_dir: Path, rows: list[dict]) -> None:
    """``eval_samples.jsonl`` as the trainer writes it: one row per eval episode, ``step`` not ``update``."""
    with open(run_dir / "eval_samples.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps({k: v for k, v in r.items() if k != "update"} | {"step": r["update"]}) + "\n")
