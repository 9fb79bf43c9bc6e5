"""Paired before/after comparison of two eval points (``picorl compare``).

Every eval point scores the same fixed tasks (one ``task_seed`` set per tier), so two points can be
compared task by task: which tasks a change fixed, which it broke, and whether the difference is more
than noise (exact McNemar test). Pairing is far more sensitive than comparing two accuracies with
overlapping intervals, because both sides share the tasks' difficulty.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picorl.logging.stats import wilson_interval

Row = dict[str, Any]
Point = str | int  # "base", "sft", "last" or an RL step


def read_eval_samples(path: str | Path) -> list[Row]:
    """The rows of a run folder's ``eval_samples.jsonl`` (or ``.jsonl.gz``), or of such a file."""
    path = Path(path)
    if path.is_dir():
        # Live runs write the plain file; committed copies under docs/results/ are gzipped.
        found = [path / n for n in ("eval_samples.jsonl", "eval_samples.jsonl.gz") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} has no eval_samples.jsonl(.gz); pass a run that has evaluated")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass runs/NAME or an eval_samples.jsonl(.gz) file")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a torn last line from a killed run: skip it, like read_jsonl
                continue
            if isinstance(row, dict) and {"stage", "step", "tier", "task_seed", "correct"} <= row.keys():
                rows.append(row)
    if not rows:
        raise ValueError(
            f"{path} has no eval rows (stage, step, tier, task_seed, correct); pass eval_samples"
        )
    return rows


def parse_point(text: str) -> Point:
    """``"sft"`` -> ``"sft"``, ``"20"`` -> ``20``; anything else is a user error."""
    text = text.strip().lower()
    if text in ("base", "sft", "last"):
        return text
    if text.isdigit():
        return int(text)
    raise ValueError(f"unknown eval point {text!r}; use base, sft, last or an RL step number")


def _available(rows: list[Row]) -> str:
    """The points present, for error messages ("base, sft, 10, 20")."""
    stages = [s for s in ("base", "sft") if any(r["stage"] == s for r in rows)]
    return ", ".join(stages + [str(s) for s in sorted({r["step"] for r in rows if r["stage"] == "rl"})])


def select(rows: list[Row], point: Point) -> tuple[str, dict[tuple[int, int], bool]]:
    """The rows of one eval point as ``{(tier, task_seed): correct}``, and a label for the point.

    An integer is the RL eval at that step; step 0 has none, so it means the policy RL started from
    (the SFT eval, else the base one). ``"last"`` is the highest step's RL eval, else the last row's.
    """
    if point == "last":
        rl = [r for r in rows if r["stage"] == "rl"]
        last = max(rl, key=lambda r: r["step"]) if rl else rows[-1]
        point = last["step"] if last["stage"] == "rl" else last["stage"]
    if point == 0 and not any(r["stage"] == "rl" and r["step"] == 0 for r in rows):
        point = "sft" if any(r["stage"] == "sft" for r in rows) else "base"
    if isinstance(point, int):
        chosen, label = [r for r in rows if r["stage"] == "rl" and r["step"] == point], f"step {point}"
    else:
        chosen, label = [r for r in rows if r["stage"] == point], str(point)
    if not chosen:
        raise ValueError(f"no {label} eval in these samples; pick one of: {_available(rows)}")
    # A resumed run may repeat a task at one point; the later row is the one that counts.
    return label, {(int(r["tier"]), int(r["task_seed"])): bool(r["correct"]) for r in chosen}


def mcnemar_p(fixed: int, broken: int) -> float:
    """Exact two-sided McNemar p-value: a binomial(f + b, 1/2) test on the discordant pairs."""
    n = fixed + broken
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(fixed, broken) + 1))
    return min(1.0, 2 * tail / 2**n)


@dataclass(frozen=True)
class TierComparison:
    """One tier's paired counts (``tier`` is None for the all-tiers row)."""

    tier: int | None
    n: int  # tasks present at both points
    correct_a: int
    correct_b: int
    fixed: int  # wrong in A, right in B
    broken: int  # right in A, wrong in B

    @property
    def p_value(self) -> float:
        return mcnemar_p(self.fixed, self.broken)


def compare(rows_a: list[Row], point_a: Point, rows_b: list[Row], point_b: Point) -> list[TierComparison]:
    """Per tier (ascending), the tasks of A's ``point_a`` paired with B's ``point_b`` by task seed.

    Tasks present on one side only are left out: an unpaired task would bias one accuracy only.
    """
    a, b = select(rows_a, point_a)[1], select(rows_b, point_b)[1]
    paired = sorted(a.keys() & b.keys())
    if not paired:
        raise ValueError(
            "the two points share no (tier, task_seed); compare runs evaluated on the same seeds"
        )
    out = []
    for tier in sorted({t for t, _ in paired}):
        keys = [k for k in paired if k[0] == tier]
        right_a, right_b = sum(a[k] for k in keys), sum(b[k] for k in keys)
        fixed, broken = sum(b[k] and not a[k] for k in keys), sum(a[k] and not b[k] for k in keys)
        out.append(TierComparison(tier, len(keys), right_a, right_b, fixed, broken))
    return out


def _acc(correct: int, n: int) -> str:
    low, high = wilson_interval(correct, n)
    return f"{correct / n:.3f} [{low:.3f}, {high:.3f}]"


def format_table(results: list[TierComparison], label_a: str = "A", label_b: str = "B") -> str:
    """A markdown table, one row per tier, plus a pooled row when there are several tiers."""
    if len(results) > 1:  # pairs stay paired across tiers, so McNemar on the pooled counts is valid
        fields = ("n", "correct_a", "correct_b", "fixed", "broken")
        results = results + [TierComparison(None, *(sum(getattr(r, f) for r in results) for f in fields))]
    lines = [
        f"| tier | n | {label_a} acc [95% CI] | {label_b} acc [95% CI] | fixed / broken | p (McNemar) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        tier = "all" if r.tier is None else str(r.tier)
        lines.append(
            f"| {tier} | {r.n} | {_acc(r.correct_a, r.n)} | {_acc(r.correct_b, r.n)} "
            f"| {r.fixed} / {r.broken} | {r.p_value:.3g} |"
        )
    return "\n".join(lines)
