"""``training_curves.png``: a grid of panels drawn from ``metrics.jsonl``.

Refreshed during the run, so it must be cheap, never leave a half-written file (saved to a temp file
then ``os.replace``d) and cope with whatever rows exist so far: a panel is drawn only when its metrics
have at least one value, and a single row gives single markers rather than an error. Uses matplotlib's
object API (no pyplot), so no GUI backend or global figure state is involved.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from picorl.logging.console import eval_tiers
from picorl.logging.metrics import SFT_STEP_KEY, read_jsonl

Rows = list[dict[str, Any]]
COLUMNS = 4
MARKER_MAX_POINTS = 60  # markers make a short run readable and clutter a long one


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def series(rows: Rows, key: str, x_key: str = "step") -> tuple[list[float], list[float]]:
    """(x, y) of the rows that have a finite ``key``."""
    xs, ys = [], []
    for row in rows:
        x, y = _number(row.get(x_key)), _number(row.get(key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _plot(ax: Axes, rows: Rows, key: str, label: str | None = None, x_key: str = "step", **style) -> bool:
    xs, ys = series(rows, key, x_key)
    if not xs:
        return False
    marker = "o" if len(xs) <= MARKER_MAX_POINTS else None
    ax.plot(xs, ys, label=label, marker=marker, markersize=3, **style)
    return True


def _tiers(evals: Rows) -> list[int]:
    return eval_tiers({key: None for row in evals for key in row})


def _tier_color(index: int) -> str:
    return f"C{index % 10}"  # the same tier gets the same color in every panel


def _reward(ax: Axes, train: Rows, evals: Rows, sft: Rows) -> bool:
    if not _plot(ax, train, "reward/mean", "mean", color="C0"):
        return False
    keys = ("step", "reward/mean", "reward/std")
    band = [
        tuple(row[k] for k in keys) for row in train if all(_number(row.get(k)) is not None for k in keys)
    ]
    if len(band) == 1:  # a band needs two points; one gets an error bar
        ax.errorbar(band[0][0], band[0][1], yerr=band[0][2], color="C0", capsize=3)
    elif band:
        xs, mean, std = zip(*band)
        low, high = [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)]
        ax.fill_between(xs, low, high, color="C0", alpha=0.2, label="± std")
    return True


def _fractions(key: str) -> Callable[[Axes, Rows, Rows, Rows], bool]:
    def draw(ax: Axes, train: Rows, evals: Rows, sft: Rows) -> bool:
        with_eval = key == "reward/format_compliance"  # eval compliance per tier shares this panel
        drew = _plot(ax, train, key, "train", color="black" if with_eval and evals else "C0")
        if with_eval:
            for i, tier in enumerate(_tiers(evals)):
                label, color = f"eval tier {tier}", _tier_color(i)
                drew |= _plot(
                    ax, evals, f"eval/tier{tier}/format_compliance", label, color=color, linestyle="--"
                )
        if drew:
            ax.set_ylim(-0.03, 1.03)
        return drew

    return draw


def _eval_accuracy(ax: Axes, train: Rows, evals: Rows, sft: Rows) -> bool:
    """The eval curve from step 0 on (after SFT when there is one); the base model's score is an x."""
    drew = False
    base = [row for row in evals if row.get("stage") == "base"]
    trained = [row for row in evals if row.get("stage") != "base"] if len(base) < len(evals) else base
    for i, tier in enumerate(_tiers(evals)):
        p = f"eval/tier{tier}/accuracy"
        if trained is not base:
            for row in base:
                if _number(row.get(p)) is not None:
                    ax.plot([row["step"]], [row[p]], color=_tier_color(i), marker="x", markersize=7)
        points = [
            (row["step"], row[p], row.get(p + "_low"), row.get(p + "_high"))
            for row in trained
            if _number(row.get("step")) is not None and _number(row.get(p)) is not None
        ]
        if not points:
            continue
        xs, acc, low, high = zip(*points)
        color = _tier_color(i)
        if all(_number(v) is not None for v in low + high):
            yerr = [[a - lo for a, lo in zip(acc, low)], [hi - a for a, hi in zip(acc, high)]]
            ax.errorbar(
                xs, acc, yerr=yerr, color=color, marker="o", markersize=3, capsize=3, label=f"tier {tier}"
            )
            if len(xs) > 1:
                ax.fill_between(xs, low, high, color=color, alpha=0.15)
        else:
            ax.plot(xs, acc, color=color, marker="o", markersize=3, label=f"tier {tier}")
        drew = True
    if drew:
        ax.set_ylim(-0.03, 1.03)
        if trained is not base and base:
            ax.text(0.02, 0.95, "x: base model", transform=ax.transAxes, va="top", fontsize=8)
    return drew


CATEGORY_AXIS = "eval set"  # a panel whose x axis is categories, not updates
STAGE_LABELS = {"base": "base", "sft": "after SFT", "rl": "after RL"}


def _eval_stages(ax: Axes, train: Rows, evals: Rows, sft: Rows) -> bool:
    """Per tier, the base model, the model after SFT and after the last RL eval, side by side."""
    last = {}
    for row in evals:
        if row.get("stage") in STAGE_LABELS:
            last[row["stage"]] = row  # the last row of each stage
    stages = [stage for stage in STAGE_LABELS if stage in last]
    tiers = _tiers(evals)
    if len(stages) < 2 or not tiers:
        return False
    width = 0.8 / len(stages)
    for j, stage in enumerate(stages):
        row = last[stage]
        acc = [_number(row.get(f"eval/tier{t}/accuracy")) or 0.0 for t in tiers]
        low = [_number(row.get(f"eval/tier{t}/accuracy_low")) for t in tiers]
        high = [_number(row.get(f"eval/tier{t}/accuracy_high")) for t in tiers]
        yerr = None
        if all(v is not None for v in low + high):
            yerr = [[a - lo for a, lo in zip(acc, low)], [hi - a for a, hi in zip(acc, high)]]
        xs = [i + (j - (len(stages) - 1) / 2) * width for i in range(len(tiers))]
        label = STAGE_LABELS[stage] + (f" (update {row['step']})" if stage == "rl" else "")
        ax.bar(xs, acc, width=width, yerr=yerr, capsize=2, label=label, color=f"C{j}")
    ax.set_xticks(range(len(tiers)), [f"tier {t}" for t in tiers])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(CATEGORY_AXIS, fontsize=8)
    return True


def _lines(*keys_labels: tuple[str, str]) -> Callable[[Axes, Rows, Rows, Rows], bool]:
    def draw(ax: Axes, train: Rows, evals: Rows, sft: Rows) -> bool:
        drew = False
        for key, label in keys_labels:
            drew |= _plot(ax, train, key, label if len(keys_labels) > 1 else None)
        return drew

    return draw


def _tokens(ax: Axes, train: Rows, evals: Rows, sft: Rows) -> bool:
    drew = _plot(ax, train, "tokens/completion_mean", "mean completion tokens", color="C0")
    if series(train, "tokens/truncated_fraction")[0]:
        twin = ax.twinx()
        _plot(twin, train, "tokens/truncated_fraction", "truncated fraction", color="C3", linestyle="--")
        twin.set_ylim(-0.03, 1.03)
        twin.set_ylabel("truncated fraction", color="C3", fontsize=8)
        twin.tick_params(labelsize=7)
        drew = True
    return drew


def _sft(ax: Axes, train: Rows, evals: Rows, sft: Rows) -> bool:
    if not _plot(ax, sft, "sft/loss", "loss", x_key=SFT_STEP_KEY):
        return False
    ax.set_xlabel("SFT step", fontsize=8)
    notes = []
    for key, label in (
        ("sft/post_format_compliance", "post-SFT format"),
        ("sft/post_mean_reward", "post-SFT reward"),
    ):
        values = [_number(r.get(key)) for r in sft if _number(r.get(key)) is not None]
        if values:
            notes.append(f"{label} {values[-1]:.2f}")
    if notes:
        ax.text(0.98, 0.95, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=8)
    return True


def _sft_lines(key: str, label: str) -> Callable[[Axes, Rows, Rows, Rows], bool]:
    def draw(ax: Axes, train: Rows, evals: Rows, sft: Rows) -> bool:
        if not _plot(ax, sft, key, label, x_key=SFT_STEP_KEY):
            return False
        ax.set_xlabel("SFT step", fontsize=8)
        return True

    return draw


# (title, drawer). Titles are the panels' identities: tests and users refer to them.
PANELS: list[tuple[str, Callable[[Axes, Rows, Rows, Rows], bool]]] = [
    ("reward (mean ± std)", _reward),
    ("exact-match fraction (train)", _fractions("reward/exact_fraction")),
    ("format compliance", _fractions("reward/format_compliance")),
    ("zero-variance groups", _fractions("groups/zero_variance_fraction")),
    ("eval accuracy (95% Wilson)", _eval_accuracy),
    ("eval by stage", _eval_stages),
    ("grad norm", _lines(("grad/norm", "grad norm"))),
    ("policy loss", _lines(("loss/policy", "loss"))),
    (
        "time per update (s)",
        _lines(("time/rollout_s", "rollout"), ("time/train_s", "train"), ("time/update_s", "update")),
    ),
    ("peak GPU memory (GB)", _lines(("memory/peak_gb", "peak"))),
    ("completion tokens & truncation", _tokens),
    (
        "engine vs trainer logprob diff",
        _lines(("engine/logprob_diff_mean", "mean"), ("engine/logprob_diff_max", "max")),
    ),
    ("engine throughput (tok/s)", _lines(("engine/tokens_per_s", "tok/s"))),
    ("learning rate", _lines(("lr", "lr"))),
    ("SFT loss", _sft),
    ("SFT throughput (tok/s)", _sft_lines("sft/tokens_per_s", "tok/s")),
]


def build_figure(rows: Rows, title: str | None = None) -> Figure:
    """The curves figure for ``rows`` (metrics.jsonl rows); only panels with data are drawn."""
    by_kind: dict[str, Rows] = {"train": [], "eval": [], "sft": []}
    for row in rows:
        by_kind.setdefault(row.get("kind", "train"), []).append(row)
    train, evals, sft = by_kind["train"], by_kind["eval"], by_kind["sft"]

    # Draw on a scratch figure first: whether a panel has data is only known once it tries.
    drawn: list[tuple[str, Callable]] = []
    scratch = Figure()
    for name, draw in PANELS:
        if draw(scratch.add_subplot(), train, evals, sft):
            drawn.append((name, draw))
        scratch.clear()

    n = max(len(drawn), 1)
    cols = min(COLUMNS, n)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.1 * nrows + 0.4), dpi=100, layout="constrained")
    fig.suptitle(title or "training curves", fontsize=12)
    if not drawn:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no metrics yet", ha="center", va="center", fontsize=14)
        return fig
    update_range = _x_range([row["step"] for row in train + evals if _number(row.get("step")) is not None])
    sft_range = _x_range([row[SFT_STEP_KEY] for row in sft if _number(row.get(SFT_STEP_KEY)) is not None])
    for i, (name, draw) in enumerate(drawn):
        ax = fig.add_subplot(nrows, cols, i + 1)
        draw(ax, train, evals, sft)
        ax.set_title(name, fontsize=10)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.get_xlabel() == CATEGORY_AXIS:
            ax.legend(fontsize=7, loc="best")
            continue
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not ax.get_xlabel():
            ax.set_xlabel("update", fontsize=8)
        # Every update panel shares one x range, so a step lines up down the grid (eval starts at 0).
        ax.set_xlim(*(sft_range if ax.get_xlabel() == "SFT step" else update_range))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    return fig


def _x_range(steps: list[float]) -> tuple[float, float]:
    """Limits covering ``steps``, at least one unit wide so a lone point gets integer ticks."""
    if not steps:
        return 0.0, 1.0
    low, high = min(steps), max(steps)
    pad = max(0.5, 0.02 * (high - low))
    return low - pad, high + pad


def panel_titles(fig: Figure) -> list[str]:
    """Titles of the figure's panels, in grid order (twin axes carry no title and are left out)."""
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def plot_training_curves(metrics_jsonl: Path, out_png: Path, *, title: str | None = None) -> list[str]:
    """Draw ``metrics_jsonl`` into ``out_png`` atomically; returns the titles of the panels drawn."""
    out_png = Path(out_png)
    fig = build_figure(read_jsonl(Path(metrics_jsonl)), title=title or Path(metrics_jsonl).parent.name)
    # Same folder (os.replace must not cross file systems); pid-unique so two writers cannot collide.
    tmp = out_png.with_name(f".{out_png.stem}.{os.getpid()}.tmp.png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out_png)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return panel_titles(fig)
