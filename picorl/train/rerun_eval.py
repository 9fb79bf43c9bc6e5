"""``picorl eval --run runs/NAME``: evaluate a run's saved adapter again, on the run's own eval sets.

The base model, eval tiers, task count, seed and token budget come from the run's ``config.toml``
(flags given on the command line override them, e.g. ``--eval-num-tasks 500`` for tighter intervals
or ``--device cpu``). The rows are written beside the run's own: ``rerun_eval.jsonl`` holds one
metrics row per re-evaluation (the shape of an eval row of ``metrics.jsonl``, ``stage: "rerun"``) and
``rerun_eval_samples.jsonl`` every episode; ``picorl report`` shows both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from picorl.config import Config, resolve_auto
from picorl.eval.evaluate import evaluate
from picorl.logging.console import format_eval_lines
from picorl.models import load_model_and_tokenizer
from picorl.models.adapter import load_adapter
from picorl.report.data import RERUN_METRICS_FILE, RERUN_SAMPLES_FILE
from picorl.rollout.episodes import sample_row
from picorl.runtime import env_factory, make_engine, pick_device
from picorl.train.checkpoint import STATE_FILE

STAGE = "rerun"


def saved_update(run_dir: Path, adapter: Path) -> int | None:
    """The update after which ``adapter`` was saved, when it is the run's own adapter or checkpoint
    (both are written together); None for an adapter from elsewhere."""
    own = {(run_dir / "adapter").resolve(), (run_dir / "checkpoint" / "model").resolve()}
    state = run_dir / "checkpoint" / STATE_FILE
    if adapter.resolve() not in own or not state.is_file():
        return None
    return int(torch.load(state, map_location="cpu", weights_only=False, mmap=True)["update"])


def _load_policy(config: Config, adapter: Path, device: torch.device):
    if (adapter / "adapter_config.json").is_file():
        model, tokenizer = load_model_and_tokenizer(
            config.model.model, dtype=config.model.dtype, device=device
        )
        return load_adapter(model, adapter, config.model.model), tokenizer  # checked: files and base
    if (adapter / "config.json").is_file():  # a full fine-tune saves the whole model
        return load_model_and_tokenizer(str(adapter), dtype=config.model.dtype, device=device)
    raise ValueError(f"{adapter} holds no adapter (adapter_config.json) or model (config.json)")


def rerun_eval(
    run_dir: str | Path, config: Config, adapter: str | Path | None = None, console=print
) -> dict[str, float]:
    """Evaluate ``adapter`` (default: the run's final ``adapter/``) with ``config`` (the run's config,
    flags applied) and append the rows to the run folder; returns the metrics."""
    run_dir = Path(run_dir)
    adapter = Path(adapter) if adapter is not None else run_dir / "adapter"
    if not adapter.is_dir():
        raise FileNotFoundError(
            f"{adapter} does not exist: the run saves its adapter at the end and every --save-every updates"
        )
    device = pick_device(config.train.device)
    config = resolve_auto(config, on_gpu=device.type == "cuda")
    model, tokenizer = _load_policy(config, adapter, device)
    engine = make_engine(config, model, tokenizer, device)
    t0 = time.perf_counter()
    metrics, episodes = evaluate(
        engine, tokenizer, lambda tier: env_factory(config, [tier])(), tiers=config.eval.eval_tiers,
        num_tasks=config.eval.eval_num_tasks, eval_seed=config.eval.eval_seed,
        max_tokens=config.eval.eval_max_tokens,
    )  # fmt: skip
    metrics["time/eval_s"] = time.perf_counter() - t0
    step = saved_update(run_dir, adapter)
    row = {
        "step": step,
        "kind": "eval",
        "stage": STAGE,
        "time": time.time(),
        "adapter": str(adapter),
        **metrics,
    }
    samples = [{**sample_row(step or 0, e, kind="eval"), "step": step, "stage": STAGE} for e in episodes]
    with open(run_dir / RERUN_METRICS_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")
    with open(run_dir / RERUN_SAMPLES_FILE, "a") as f:
        f.writelines(json.dumps(s, default=str) + "\n" for s in samples)
    console(
        f"eval of {run_dir} with {adapter}"
        + (f" (saved after update {step})" if step is not None else "")
        + ":"
    )
    for line in format_eval_lines(step or 0, metrics):
        console(line)
    console(f"wrote {run_dir / RERUN_METRICS_FILE} and {run_dir / RERUN_SAMPLES_FILE}")
    return metrics
