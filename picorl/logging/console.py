"""Console output: one concise line per update, one line per eval tier, and a progress bar.

The line formatters are pure functions of a metrics dict (missing keys are skipped, so a partial dict
still prints). :class:`UpdateProgress` draws a rich progress bar on a terminal and falls back to plain,
flushed prints when stdout is not a TTY, so CI logs stay one readable line per update.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_EVAL_ACCURACY = re.compile(r"^eval/tier(\d+)/accuracy$")


def _get(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None or isinstance(value, str) else float(value)


def _join(*pieces: str | None) -> str:
    return " ".join(p for p in pieces if p)


def _fmt(label: str, value: float | None, spec: str) -> str | None:
    return None if value is None else f"{label} {value:{spec}}"


def format_update_line(step: int, total: int, metrics: dict[str, Any]) -> str:
    """One line per update, e.g.
    ``update 12/50 | reward 0.62±0.21 exact 0.38 fmt 0.97 | zero-var 0.25 | loss -0.013 | gnorm 0.42 |
    28.1s (roll 20.3 train 7.8) | 512 tok/s``. Segments whose metrics are missing are left out."""
    m = lambda key: _get(metrics, key)  # noqa: E731
    mean, std = m("reward/mean"), m("reward/std")
    reward = None
    if mean is not None:
        reward = f"reward {mean:.2f}" + (f"±{std:.2f}" if std is not None else "")
    timing = [_fmt("roll", m("time/rollout_s"), ".1f"), _fmt("train", m("time/train_s"), ".1f")]
    update_s = m("time/update_s")
    if update_s is not None:
        time_part = f"{update_s:.1f}s" + (f" ({_join(*timing)})" if any(timing) else "")
    else:
        time_part = _join(*(t + "s" for t in timing if t))
    tok_s = m("engine/tokens_per_s")
    memory = m("memory/peak_gb")
    segments = [
        f"update {step}/{total}",
        _join(
            reward,
            _fmt("exact", m("reward/exact_fraction"), ".2f"),
            _fmt("fmt", m("reward/format_compliance"), ".2f"),
        ),
        _fmt("zero-var", m("groups/zero_variance_fraction"), ".2f"),
        _fmt("loss", m("loss/policy"), ".3g"),
        _fmt("gnorm", m("grad/norm"), ".3g"),
        _skipped(m("train/skipped_steps")),
        _join(
            _fmt("len", m("tokens/completion_mean"), ".0f"),
            _fmt("trunc", m("tokens/truncated_fraction"), ".2f"),
        ),
        time_part,
        None if tok_s is None else f"{tok_s:.0f} tok/s",
        None if memory is None else f"mem {memory:.1f}GB",
    ]
    return " | ".join(s for s in segments if s)


def eval_tiers(metrics: dict[str, Any]) -> list[int]:
    """The tiers that have an ``eval/tier{N}/accuracy`` metric, sorted."""
    return sorted(int(match.group(1)) for key in metrics if (match := _EVAL_ACCURACY.match(key)))


def format_eval_lines(step: int, metrics: dict[str, Any]) -> list[str]:
    """One line per evaluated tier, e.g.
    ``eval @ update 12 | tier 6: accuracy 0.385 [0.318, 0.455] n=200 | format 0.97 | reward 0.712``."""
    lines = []
    for tier in eval_tiers(metrics):
        p = f"eval/tier{tier}/"
        acc, low, high = (
            _get(metrics, p + "accuracy"),
            _get(metrics, p + "accuracy_low"),
            _get(metrics, p + "accuracy_high"),
        )
        n = _get(metrics, p + "n")
        head = f"tier {tier}: accuracy " + ("n/a" if acc is None else f"{acc:.3f}")
        if low is not None and high is not None:
            head += f" [{low:.3f}, {high:.3f}]"
        if n is not None:
            head += f" n={n:.0f}"
        stage = metrics.get("stage")
        where = {"base": "eval of the base model", "sft": "eval after SFT"}.get(stage, f"eval @ update {step}")
        segments = [
            where,
            head,
            _fmt("format", _get(metrics, p + "format_compliance"), ".2f"),
            _fmt("reward", _get(metrics, p + "reward_mean"), ".3f"),
        ]
        lines.append(" | ".join(s for s in segments if s))
    return lines


def _skipped(count: float | None) -> str | None:
    """``skipped N``: optimizer steps skipped on a non-finite gradient so far (shown once there are any)."""
    return f"skipped {count:.0f} steps (non-finite gradient)" if count else None


def format_sft_line(sft_step: int, total: int, metrics: dict[str, Any]) -> str:
    """One line per SFT warm-up step (or its closing summary), e.g. ``sft 10/50 | loss 0.842``."""
    segments = [
        f"sft {sft_step}/{total}",
        _fmt("loss", _get(metrics, "sft/loss"), ".4g"),
        _fmt("gnorm", _get(metrics, "sft/grad_norm"), ".3g"),
        _skipped(_get(metrics, "sft/skipped_steps")),
        _fmt("tok/s", _get(metrics, "sft/tokens_per_s"), ",.0f"),
        _fmt("lr", _get(metrics, "sft/lr"), ".2e"),
        _fmt("post-sft format", _get(metrics, "sft/post_format_compliance"), ".2f"),
        _fmt("post-sft reward", _get(metrics, "sft/post_mean_reward"), ".3f"),
    ]
    return " | ".join(s for s in segments if s)


class UpdateProgress:
    """A progress bar over ``total`` updates with lines printed above it; plain prints off a terminal.

    Use as a context manager; call :meth:`update` after each update with ``step`` = updates done so far.
    """

    def __init__(self, total: int, *, description: str = "updates", console: Console | None = None) -> None:
        self.total = total
        self.console = console if console is not None else Console()
        # Off a terminal (CI, nohup, a pipe) a live bar would print escape codes or nothing useful.
        self.interactive = self.console.is_terminal
        self._progress: Progress | None = None
        self._task = None
        self._description = description

    def __enter__(self) -> UpdateProgress:
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._description, total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def print(self, text: str) -> None:
        """A line above the bar (or a plain flushed print off a terminal)."""
        if self._progress is not None:
            # markup off: eval intervals like "[0.318, 0.455]" are text, not rich tags.
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.console.file, flush=True)

    def update(self, step: int, metrics: dict[str, Any]) -> str:
        """Print the update line for ``step`` and move the bar to it; returns the line."""
        line = format_update_line(step, self.total, metrics)
        self.print(line)
        if self._progress is not None:
            self._progress.update(self._task, completed=step)
        return line

    def eval(self, step: int, metrics: dict[str, Any]) -> list[str]:
        """Print the per-tier eval lines; returns them."""
        lines = format_eval_lines(step, metrics)
        for line in lines:
            self.print(line)
        return lines
