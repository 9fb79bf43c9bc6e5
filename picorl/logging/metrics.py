"""The run's metric log: ``metrics.jsonl`` and ``samples.jsonl`` in the run directory, optionally mirrored
to Weights & Biases and TensorBoard (:mod:`picorl.logging.tensorboard`).

One step counter for the whole run (the seed logged SFT steps on the same wandb axis as updates, so
they collided and hid updates 0-1). ``step`` is the update counter of the RL loop and never goes backwards:

- ``kind="train"``: one row per update, so its ``step`` strictly increases.
- ``kind="eval"``: rows share the counter of the updates they follow (the step-0 eval comes first).
- ``kind="sft"``: the warm-up happens before update 0, so its rows have ``step = 0`` and count their
  own progress in ``sft/step`` (use :meth:`MetricsLogger.log_sft`). On wandb every ``sft/*`` metric is
  plotted against ``sft/step`` and every other metric against ``update`` (via ``define_metric``), so
  the two never share an x-axis.

Each call writes one JSON line and flushes it at once, so a killed run keeps every row it logged.
Non-finite floats are written as ``null`` (strict JSON; readers such as jq reject ``NaN``).
"""

from __future__ import annotations

import json
import math
import operator
import os
import secrets
import string
import time
from pathlib import Path
from typing import Any

KINDS = ("train", "eval", "sft")
RESERVED_KEYS = ("step", "kind", "time")
SFT_STEP_KEY = "sft/step"
WANDB_STEP_KEY = "update"
WANDB_ID_FILE = "wandb_run_id.txt"


LOG_FILES = ("metrics.jsonl", "samples.jsonl", "eval_samples.jsonl")


def log_sizes(run_dir: Path) -> dict[str, int]:
    """The byte length of each log file now (0 if absent): a checkpoint records them so that a resume
    cuts the logs back to exactly the rows written before it."""
    return {
        name: (Path(run_dir) / name).stat().st_size if (Path(run_dir) / name).exists() else 0
        for name in LOG_FILES
    }


def truncate_logs(run_dir: Path, sizes: dict[str, int]) -> None:
    """Cut each log file back to ``sizes[name]`` bytes (files not named there are emptied)."""
    for name in LOG_FILES:
        path = Path(run_dir) / name
        if path.exists() and path.stat().st_size > sizes.get(name, 0):
            with path.open("r+b") as f:
                f.truncate(sizes.get(name, 0))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON object in ``path`` (missing file -> []). A torn last line, left by a run killed
    mid-write, is skipped rather than failing the reader."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, path)


def _as_int(value: Any) -> int | None:
    """``value`` as an int if it is an integer (Python, numpy or torch), else None. bool is not an int."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _clean_value(key: str, value: Any) -> Any:
    if hasattr(value, "item"):  # torch / numpy scalars
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(f"metric {key!r} must be a number, bool, str or None, got {type(value).__name__}")


class MetricsLogger:
    """Appends metric rows to ``run_dir/metrics.jsonl`` and rollouts to ``run_dir/samples.jsonl``.

    ``resume=True`` continues an existing log; with ``resume_step`` it first drops rows written after
    that step (the checkpoint being resumed), so the resumed run does not duplicate them. Without
    ``resume`` an existing non-empty ``metrics.jsonl`` is an error: two runs would mix their rows.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        run_name: str,
        config: dict[str, Any],
        wandb: bool = False,
        wandb_project: str = "picorl",
        wandb_mode: str | None = None,
        resume: bool = False,
        resume_step: int | None = None,
        tensorboard: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.eval_samples_path = self.run_dir / "eval_samples.jsonl"
        if resume_step is not None and not resume:
            raise ValueError("resume_step only makes sense with resume=True")
        rows = read_jsonl(self.metrics_path)
        if rows and not resume:
            raise FileExistsError(
                f"{self.metrics_path} already has {len(rows)} rows: resume the run (--resume) "
                "or pick another run name (--name)"
            )
        if resume and resume_step is not None:
            rows = [r for r in rows if r.get("step", 0) <= resume_step]
            _write_jsonl_atomic(self.metrics_path, rows)
            samples = read_jsonl(self.samples_path)
            _write_jsonl_atomic(self.samples_path, [s for s in samples if s.get("update", 0) <= resume_step])
            evals = read_jsonl(self.eval_samples_path)
            _write_jsonl_atomic(self.eval_samples_path, [s for s in evals if s.get("step", 0) <= resume_step])
        self._last_step: dict[str, int] = {}
        self._last_sft_step = -1
        for row in rows:
            kind = row.get("kind", "train")
            self._last_step[kind] = max(self._last_step.get(kind, -1), int(row.get("step", 0)))
            if kind == "sft":
                self._last_sft_step = max(self._last_sft_step, int(row.get(SFT_STEP_KEY, 0)))
        self._metrics_file = self.metrics_path.open("a")
        self._samples_file = self.samples_path.open("a")
        self._eval_samples_file = None  # opened at the first eval, so runs without one have no file
        self._wandb_run = None
        self._wandb_defined: set[str] = set()
        if wandb:
            self._wandb_run = _init_wandb(self.run_dir, wandb_project, wandb_mode, run_name, config, resume)
        self._tensorboard = None
        if tensorboard:
            from picorl.logging.tensorboard import TensorBoardWriter

            self._tensorboard = TensorBoardWriter(self.run_dir, resume_step if resume else None)

    @property
    def last_step(self) -> int:
        """The largest step logged so far, of any kind (-1 before the first row)."""
        return max(self._last_step.values(), default=-1)

    def log(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
        """Append one row ``{"step", "kind", "time", **metrics}`` and flush it."""
        self._check_step(step, metrics, kind)
        bad = [k for k in metrics if k in RESERVED_KEYS]
        if bad:
            raise ValueError(f"metric names {bad} are reserved for the row itself ({RESERVED_KEYS})")
        step = _as_int(step)
        row = {"step": step, "kind": kind, "time": time.time()}
        row.update({k: _clean_value(k, v) for k, v in metrics.items()})
        self._metrics_file.write(json.dumps(row) + "\n")
        self._metrics_file.flush()
        self._last_step[kind] = step
        if kind == "sft":
            self._last_sft_step = row[SFT_STEP_KEY]
        if self._wandb_run is not None:
            self._log_wandb(row)
        if self._tensorboard is not None:
            sft = kind == "sft"
            values = {k: v for k, v in row.items() if k not in RESERVED_KEYS and k != SFT_STEP_KEY}
            self._tensorboard.log_scalars(values, row[SFT_STEP_KEY] if sft else step, sft, row["time"])

    def log_sft(self, sft_step: int, metrics: dict[str, Any]) -> None:
        """An SFT warm-up row: ``step = 0`` (it precedes update 0), progress in ``sft/step``."""
        self.log(0, {SFT_STEP_KEY: sft_step, **metrics}, kind="sft")

    def log_samples(self, rows: list[dict[str, Any]]) -> None:
        """Append rollout records (update, group, prompt, completion, reward, ...) to samples.jsonl."""
        for row in rows:
            self._samples_file.write(json.dumps(row, default=str) + "\n")
        self._samples_file.flush()
        evals = [r for r in rows if r.get("kind") == "eval"]
        if self._tensorboard is not None and evals:
            self._tensorboard.log_eval_samples(int(evals[0].get("update", evals[0].get("step", 0))), evals)

    def log_eval_samples(self, rows: list[dict[str, Any]]) -> None:
        """Append every eval episode (step, stage, tier, task seed, prompt, completion, reward, correct,
        ...) to eval_samples.jsonl, so each eval number can be re-scored."""
        if self._eval_samples_file is None:
            self._eval_samples_file = self.eval_samples_path.open("a")
        for row in rows:
            self._eval_samples_file.write(json.dumps(row, default=str) + "\n")
        self._eval_samples_file.flush()
        if self._tensorboard is not None and rows:
            self._tensorboard.log_eval_samples(int(rows[0].get("step", 0)), rows)

    def close(self) -> None:
        self._metrics_file.close()
        self._samples_file.close()
        if self._eval_samples_file is not None:
            self._eval_samples_file.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_step(self, step: int, metrics: dict[str, Any], kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if _as_int(step) is None or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if step < self.last_step:
            raise ValueError(
                f"{kind} row at step {step} but step {self.last_step} was already logged: "
                "the step counter never goes backwards"
            )
        if kind == "train" and step <= self._last_step.get("train", -1):
            raise ValueError(f"train row for step {step} was already logged: one train row per update")
        if kind == "sft":
            if step != 0:
                raise ValueError(
                    f"sft rows precede update 0 and use step 0 (got {step}); count in {SFT_STEP_KEY}"
                )
            sft_step = _as_int(metrics.get(SFT_STEP_KEY))
            if sft_step is None or sft_step < self._last_sft_step:
                raise ValueError(
                    f"sft rows need an int {SFT_STEP_KEY!r} >= the last one ({self._last_sft_step}), "
                    f"got {metrics.get(SFT_STEP_KEY)!r}"
                )

    def _log_wandb(self, row: dict[str, Any]) -> None:
        # Never wandb's implicit step: sft/* has its own axis, everything else is against the update.
        data = {k: v for k, v in row.items() if k not in RESERVED_KEYS and v is not None}
        if row["kind"] != "sft":
            data[WANDB_STEP_KEY] = row["step"]
        for key in data:
            if key in self._wandb_defined or key in (WANDB_STEP_KEY, SFT_STEP_KEY):
                continue
            axis = SFT_STEP_KEY if key.startswith("sft/") else WANDB_STEP_KEY
            self._wandb_run.define_metric(key, step_metric=axis)
            self._wandb_defined.add(key)
        self._wandb_run.log(data)


class NullLogger:
    """A :class:`MetricsLogger` that writes nothing: what the ranks other than 0 of a data-parallel run
    log to (rank 0 alone writes the run folder)."""

    def log(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
        pass

    def log_sft(self, sft_step: int, metrics: dict[str, Any]) -> None:
        pass

    def log_samples(self, rows: list[dict[str, Any]]) -> None:
        pass

    def log_eval_samples(self, rows: list[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


def _init_wandb(run_dir: Path, project: str, mode: str | None, run_name: str, config: dict, resume: bool):
    try:
        import wandb
    except ImportError as err:
        raise ImportError(
            "--wandb needs the wandb package, which is not installed: pip install wandb "
            "(or pip install 'picorl[wandb]'), or drop --wandb"
        ) from err
    # A stable id lets a resumed run continue the same wandb run instead of starting a new one.
    id_file = run_dir / WANDB_ID_FILE
    if resume and id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        # Our own id (wandb's generator moved between releases): 8 of [a-z0-9], like wandb's.
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        id_file.write_text(run_id + "\n")
    mode = mode or os.environ.get("WANDB_MODE")
    kwargs = {"mode": mode} if mode else {}
    run = wandb.init(
        project=project, name=run_name, config=config, dir=str(run_dir), id=run_id, resume="allow", **kwargs
    )
    run.define_metric(WANDB_STEP_KEY)
    run.define_metric(SFT_STEP_KEY)
    return run
