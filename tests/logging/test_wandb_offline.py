"""Weights & Biases for real: the installed ``wandb`` package, offline (``WANDB_MODE=offline``).

The run file wandb writes is read back (``wandb_records``), so these tests see what a ``wandb sync``
would upload: every metric on its axis, the config, and one run id across a resume.
"""

import os

import pytest

from picorl.logging.metrics import WANDB_ID_FILE, MetricsLogger

if os.environ.get("CI"):
    import wandb  # noqa: F401 - CI installs the extra; a missing package must fail there, not skip
else:
    pytest.importorskip("wandb")

from tests.logging import wandb_records  # noqa: E402

CONFIG = {"model.model": "tiny-qwen3", "rollout.k": 4, "algo.algo": "grpo"}


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))


def run_files(run_dir):
    """The run files, complete: wandb's service process may still be writing after ``finish()``
    returns, and ``teardown()`` waits for it (a real run's process does so at exit)."""
    import wandb

    wandb.teardown()
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def logger(run_dir, **kwargs):
    return MetricsLogger(run_dir, run_name="wb", config=CONFIG, wandb=True, **kwargs)


def test_offline_run_holds_every_metric_and_the_config(tmp_path):
    run_dir = tmp_path / "run"
    with logger(run_dir) as log:
        log.log_sft(1, {"sft/loss": 2.5})
        log.log(0, {"eval/tier1/accuracy": 0.25, "eval/tier1/n": 4.0}, kind="eval")
        log.log(1, {"reward/mean": 0.5, "loss/policy": -0.125, "grad/norm": 0.75})
        log.log(2, {"reward/mean": 0.625, "loss/policy": 0.25, "grad/norm": 0.5})
    (path,) = run_files(run_dir)
    records = wandb_records.read_records(path)
    rows = wandb_records.history(records)
    by_update = {}
    for row in rows:
        if "update" in row:
            by_update.setdefault(row["update"], {}).update(row)
    assert by_update[1]["reward/mean"] == 0.5 and by_update[1]["loss/policy"] == -0.125
    assert by_update[2]["reward/mean"] == 0.625 and by_update[2]["grad/norm"] == 0.5
    assert by_update[0]["eval/tier1/accuracy"] == 0.25
    (sft,) = [r for r in rows if "sft/loss" in r]
    assert sft["sft/step"] == 1 and sft["sft/loss"] == 2.5 and "update" not in sft
    config = wandb_records.config(records)
    assert {k: config[k] for k in CONFIG} == CONFIG
    assert wandb_records.run_ids(records) == {(run_dir / WANDB_ID_FILE).read_text().strip()}


def test_resume_continues_the_same_run_id(tmp_path):
    run_dir = tmp_path / "run"
    with logger(run_dir) as log:
        log.log(1, {"reward/mean": 0.5})
        log.log(2, {"reward/mean": 0.75})  # after the checkpoint: dropped on resume
    with logger(run_dir, resume=True, resume_step=1) as log:
        log.log(2, {"reward/mean": 0.25})
    first, second = (wandb_records.read_records(p) for p in run_files(run_dir))
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    assert wandb_records.run_ids(first) == wandb_records.run_ids(second) == {run_id}
    resumed = [r for r in wandb_records.history(second) if "reward/mean" in r]
    assert [(r["update"], r["reward/mean"]) for r in resumed] == [(2, 0.25)]


def test_a_training_run_writes_its_metrics_and_config_to_wandb_and_tensorboard(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from picorl.cli import main
    from picorl.logging.metrics import read_jsonl

    monkeypatch.chdir(tmp_path)
    args = ["--model", "tiny-qwen3", "--k", "2", "--num-tasks", "2", "--max-tokens", "6", "--eval-num-tasks", "2",
            "--eval-tiers", "1", "--sft-steps", "0", "--num-updates", "2", "--name", "wt", "--wandb", "--tensorboard"]  # fmt: skip
    assert main(["train", *args]) == 0
    run_dir = tmp_path / "runs" / "wt"
    train = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]
    (path,) = run_files(run_dir)
    records = wandb_records.read_records(path)
    logged = {}
    for row in wandb_records.history(records):
        if "update" in row:
            logged.setdefault(row["update"], {}).update(row)
    for row in train:
        numbers = {k: v for k, v in row.items() if isinstance(v, float) and k not in ("time",)}
        assert numbers and {k: logged[row["step"]][k] for k in numbers} == pytest.approx(numbers)
    config = wandb_records.config(records)
    assert config["model.model"] == "tiny-qwen3" and config["rollout.k"] == 2
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [
        (r["step"], pytest.approx(r["reward/mean"])) for r in train
    ]
    assert [e.step for e in events.Tensors("eval/samples/text_summary")] == [0, 2]
