"""What the report shows, read from a run folder: eval table, rollout groups, eval samples, config.

Everything here is plain data (dicts, lists, numbers, strings) so it can be embedded in the page as
JSON. Rollouts come from ``samples.jsonl`` (``kind: train``); eval episodes from ``eval_samples.jsonl``
when the run has one, else from the ``kind: eval`` rows of ``samples.jsonl``. Rows written before
samples carried ``expected``/``parsed``/``tier`` are re-scored with the run's environment (its tasks
are a fixed function of the task seed), so older runs still show the expected answer and the diff.
"""

from __future__ import annotations

import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

from picorl.logging.metrics import read_jsonl
from picorl.logging.stats import wilson_interval

Row = dict[str, Any]
EVAL_SAMPLES_FILE = "eval_samples.jsonl"
RERUN_METRICS_FILE = "rerun_eval.jsonl"  # written by `picorl eval --run` (picorl.train.rerun_eval)
RERUN_SAMPLES_FILE = "rerun_eval_samples.jsonl"
GROUP_KEYS = ("reward", "correct", "advantage", "completion_tokens", "finish_reason")


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.toml`` as nested dicts ({} when the file is missing)."""
    path = Path(run_dir) / "config.toml"
    return tomllib.loads(path.read_text()) if path.is_file() else {}


def eval_table(metrics: list[Row]) -> dict[str, Any]:
    """One row per eval (stage or step), one cell per tier: accuracy, its 95% interval, n, format."""
    evals = [r for r in metrics if r.get("kind") == "eval"]
    tiers = sorted(
        {
            int(k.split("/")[1][4:])
            for r in evals
            for k in r
            if k.startswith("eval/tier") and k.count("/") == 2
        }
    )
    rows = []
    for r in evals:
        cells = {}
        for tier in tiers:
            p = f"eval/tier{tier}"
            acc, n = r.get(f"{p}/accuracy"), r.get(f"{p}/n")
            if acc is None:
                continue
            low, high = r.get(f"{p}/accuracy_low"), r.get(f"{p}/accuracy_high")
            if (low is None or high is None) and n:
                low, high = wilson_interval(round(acc * n), int(n))
            cells[str(tier)] = {
                "accuracy": acc, "low": low, "high": high, "n": n,
                "format": r.get(f"{p}/format_compliance"), "reward": r.get(f"{p}/reward_mean"),
            }  # fmt: skip
        stage = r.get("stage")
        rows.append({"step": r.get("step"), "stage": str(stage) if stage is not None else "", "cells": cells})
    return {"tiers": tiers, "rows": rows}


def _rescorer(config: dict[str, Any]):
    """A function filling ``expected``/``parsed``/``tier`` of an old row by replaying its task."""
    from picorl.envs.registry import make_env

    env_cfg = config.get("env", {})
    name = env_cfg.get("env", "letter_counting")
    train_tiers = env_cfg.get("train_difficulty", [1])
    reward_mode = env_cfg.get("reward_mode", "partial")

    def rescore(row: Row) -> None:
        tier = row.get("tier")
        try:
            env = make_env(name, difficulty=tier or train_tiers, reward_mode=reward_mode)
            env.reset(int(row["task_seed"]))
            info = env.step(str(row.get("completion", ""))).info
        except Exception:  # a row we cannot replay just shows no expected answer
            return
        for key in ("expected", "parsed", "tier"):
            if row.get(key) is None and info.get(key) is not None:
                row[key] = info[key]

    return rescore


def answer_diff(expected: dict | None, parsed: dict | None) -> list[dict[str, Any]]:
    """Per asked letter: the count expected, the count given (None if none) and given - expected."""
    if not isinstance(expected, dict):
        return []
    out = []
    for letter, want in expected.items():
        got = parsed.get(letter) if isinstance(parsed, dict) else None
        delta = got - want if isinstance(got, int) and isinstance(want, int) else None
        out.append({"letter": letter, "expected": want, "given": got, "delta": delta})
    if isinstance(parsed, dict):  # keys the model invented
        out += [
            {"letter": k, "expected": None, "given": parsed[k], "delta": None}
            for k in parsed
            if k not in expected
        ]
    return out


def _prompt_text(prompt: Any) -> tuple[str, str]:
    """(system, user) text of a prompt stored as chat messages (or as a plain string)."""
    if isinstance(prompt, str):
        return "", prompt
    if not isinstance(prompt, list):
        return "", ""
    system = "\n".join(m.get("content", "") for m in prompt if m.get("role") == "system")
    user = "\n\n".join(m.get("content", "") for m in prompt if m.get("role") != "system")
    return system, user


def _member(row: Row, step: int) -> Row:
    member = {key: row.get(key) for key in GROUP_KEYS}
    member["step"] = step
    member["stage"] = str(row["stage"]) if row.get("stage") is not None else ""
    member["completion"] = str(row.get("completion", ""))
    member["diff"] = answer_diff(row.get("expected"), row.get("parsed"))
    member["given"] = row.get("parsed")
    return member


def _group(key: tuple, rows: list[tuple[int, Row]], kind: str) -> Row:
    first = rows[0][1]
    system, user = _prompt_text(first.get("prompt"))
    members = [_member(r, step) for step, r in rows]
    rewards = [m["reward"] for m in members if isinstance(m["reward"], int | float)]
    return {
        "id": f"{kind}-" + "-".join(str(k) for k in key),
        "step": rows[0][0] if kind == "train" else None,
        "group": first.get("group"),
        "task_seed": first.get("task_seed"),
        "tier": first.get("tier"),
        "system": system,
        "prompt": user,
        "expected": first.get("expected"),
        "members": members,
        "zero_variance": len(rewards) > 1 and max(rewards) == min(rewards),
    }


def rollout_groups(samples: list[Row]) -> list[Row]:
    """GRPO groups of the sampled updates: the k rollouts of one prompt at one update."""
    groups: dict[tuple, list[tuple[int, Row]]] = defaultdict(list)
    for row in samples:
        if row.get("kind", "train") == "train":
            step = _step(row.get("update", row.get("step")))
            groups[(step, row.get("group"))].append((step, row))
    return [_group(key, rows, "train") for key, rows in sorted(groups.items(), key=_sort_key)]


def eval_groups(eval_rows: list[Row]) -> list[Row]:
    """Eval tasks: one fixed task (tier, task seed) with the model's answer at every evaluated step,
    so what changed on the same question is side by side."""
    groups: dict[tuple, list[tuple[int, Row]]] = defaultdict(list)
    for row in eval_rows:
        step = _step(row.get("step", row.get("update")))
        groups[(row.get("tier"), row.get("task_seed"))].append((step, row))
    return [
        _group(key, sorted(rows, key=lambda x: _order((x[0],))), "eval")
        for key, rows in sorted(groups.items(), key=_sort_key)
    ]


def _step(value: Any) -> int | str:
    """A row's step: an int, or kept as text when a writer used a label (e.g. "base")."""
    if isinstance(value, bool) or value is None:
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def _order(values: tuple) -> tuple:
    """Sort key for mixed ints and labels: numbers first, in order, then text."""
    return tuple((0, v) if isinstance(v, int | float) else (1, str(v)) for v in values)


def _sort_key(item: tuple) -> tuple:
    return _order(item[0])


def load_run(run_dir: Path) -> dict[str, Any]:
    """Everything the report shows about the run in ``run_dir``."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    samples = read_jsonl(run_dir / "samples.jsonl")
    eval_rows = read_jsonl(run_dir / EVAL_SAMPLES_FILE)
    if not eval_rows:
        eval_rows = [{**r, "step": r.get("update", 0)} for r in samples if r.get("kind") == "eval"]
    reruns = read_jsonl(run_dir / RERUN_SAMPLES_FILE)
    eval_rows += [{**r, "step": r["step"] if r.get("step") is not None else "other adapter"} for r in reruns]
    rescore = _rescorer(config)
    for row in [*samples, *eval_rows]:
        if row.get("expected") is None and "task_seed" in row:
            rescore(row)
    train = [r for r in metrics if r.get("kind") == "train"]
    return {
        "name": run_dir.name,
        "model": config.get("model", {}).get("model", "?"),
        "algo": config.get("algo", {}).get("algo", "?"),
        "updates_done": max((s for r in train if isinstance(s := _step(r.get("step")), int)), default=0),
        "updates_total": config.get("train", {}).get("num_updates"),
        "config_text": (run_dir / "config.toml").read_text() if (run_dir / "config.toml").is_file() else "",
        "eval_table": eval_table(metrics + read_jsonl(run_dir / RERUN_METRICS_FILE)),
        "rollouts": rollout_groups(samples),
        "evals": eval_groups(eval_rows),
    }
