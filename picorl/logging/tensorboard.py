"""TensorBoard mirror of ``metrics.jsonl`` (``--tensorboard``): event files in ``runs/NAME/tensorboard/``.

Every numeric metric of a train or eval row is a scalar at ``global_step = step``, the same axis as
``metrics.jsonl``. The SFT warm-up precedes update 0 and counts in ``sft/step``, so its rows go to a
second writer (``tensorboard/sft``, shown as its own run) at ``global_step = sft/step``: the two
axes never share a chart. Eval completions are logged as a markdown table (TensorBoard's Text tab).

On resume the main writer purges the events after the resumed checkpoint (``purge_step``), so a
resumed run shows no duplicated or orphaned points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"
TEXT_SAMPLES = 16  # eval completions shown per eval: enough to see what the model writes
TEXT_CHARS = 600


def _writer(log_dir: Path, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's writer needs the tensorboard package
        raise ImportError(
            "--tensorboard needs the tensorboard package, which is not installed: pip install tensorboard"
        ) from err
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step, flush_secs=10)


def _cell(value: Any) -> str:
    """A markdown table cell: no pipes or newlines inside."""
    return str(value).replace("|", "\\|").replace("\r", "").replace("\n", " ⏎ ")


class TensorBoardWriter:
    """Writes the rows a :class:`~picorl.logging.metrics.MetricsLogger` logs as TensorBoard events."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        purge = resume_step + 1 if resume_step is not None else None
        self._main = _writer(self.log_dir, purge)
        self._sft = None  # made on the first SFT row, so runs without SFT have no empty sft run

    def log_scalars(self, values: dict[str, Any], step: int, sft: bool = False, walltime=None) -> None:
        """The numbers among ``values`` (one metrics.jsonl row, less its own keys) at ``step``: the
        update, or for an SFT row its ``sft/step`` on the SFT writer. Bools and text are left out."""
        if sft and self._sft is None:
            self._sft = _writer(self.log_dir / "sft")
        writer = self._sft if sft else self._main
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                writer.add_scalar(key, value, global_step=step, walltime=walltime)
        writer.flush()  # the run is watched live; a few KB per update

    def log_eval_samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """The first eval completions of one eval as a markdown table under ``eval/samples``."""
        if not rows:
            return
        lines = ["| tier | correct | reward | expected | completion |", "|---|---|---|---|---|"]
        for row in rows[:TEXT_SAMPLES]:
            completion = str(row.get("completion", ""))
            if len(completion) > TEXT_CHARS:
                completion = completion[:TEXT_CHARS] + " …"
            cells = (row.get("tier"), row.get("correct"), row.get("reward"), row.get("expected"), completion)
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        self._main.add_text("eval/samples", "\n".join(lines), global_step=step)
        self._main.flush()

    def close(self) -> None:
        for writer in (self._main, self._sft):
            if writer is not None:
                writer.close()
