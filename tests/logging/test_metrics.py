import io
import json
import re
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from rich.console import Console

from picorl.logging.console import UpdateProgress, format_eval_lines, format_sft_line, format_update_line
from picorl.logging.metrics import MetricsLogger, read_jsonl
from picorl.logging.stats import wilson_interval


def make_logger(run_dir, **kwargs) -> MetricsLogger:
    return MetricsLogger(run_dir, run_name="test", config={"lr": 1e-5}, **kwargs)


def strict_rows(path) -> list[dict]:
    """Parse as strict JSON: NaN / Infinity literals are an error."""

    def reject(token):
        raise ValueError(f"non-standard JSON constant {token}")

    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


# --- metrics.jsonl -------------------------------------------------------------------------------


def test_rows_are_written_and_flushed_at_once(tmp_path):
    logger = make_logger(tmp_path)
    logger.log(0, {"eval/tier6/accuracy": 0.25}, kind="eval")
    logger.log(1, {"reward/mean": 0.5, "loss/policy": -0.01})
    # Read back while the logger is still open: nothing may sit in a buffer.
    rows = strict_rows(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["kind"]) for r in rows] == [(0, "eval"), (1, "train")]
    assert rows[1]["reward/mean"] == 0.5 and rows[1]["loss/policy"] == -0.01
    assert all(isinstance(r["time"], float) and r["time"] > 1.6e9 for r in rows)
    logger.close()


def test_rows_survive_a_killed_process(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from picorl.logging.metrics import MetricsLogger
        logger = MetricsLogger({str(tmp_path)!r}, run_name="killed", config={{}})
        for step in range(1, 4):
            logger.log(step, {{"reward/mean": step / 10}})
        logger.log_samples([{{"update": 3, "completion": "abc"}}])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9, result.stderr.decode()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert read_jsonl(tmp_path / "samples.jsonl") == [{"update": 3, "completion": "abc"}]


def test_non_finite_and_array_scalars_become_plain_json(tmp_path):
    with make_logger(tmp_path) as logger:
        logger.log(
            np.int64(1), {"loss/policy": float("nan"), "grad/norm": np.float32(0.5), "x": float("inf")}
        )
    (row,) = strict_rows(tmp_path / "metrics.jsonl")
    assert row["step"] == 1 and row["loss/policy"] is None and row["x"] is None and row["grad/norm"] == 0.5


def test_step_never_goes_backwards(tmp_path):
    with make_logger(tmp_path) as logger:
        logger.log(0, {"eval/tier6/accuracy": 0.1}, kind="eval")
        logger.log(1, {"reward/mean": 0.1})
        logger.log(2, {"reward/mean": 0.2})
        logger.log(2, {"eval/tier6/accuracy": 0.2}, kind="eval")  # eval after update 2 shares its step
        with pytest.raises(ValueError, match="never goes backwards"):
            logger.log(1, {"reward/mean": 0.3})
        with pytest.raises(ValueError, match="never goes backwards"):
            logger.log(1, {"eval/tier6/accuracy": 0.3}, kind="eval")
        with pytest.raises(ValueError, match="one train row per update"):
            logger.log(2, {"reward/mean": 0.3})
        assert logger.last_step == 2
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2, 2]


def test_sft_rows_have_their_own_counter_and_do_not_collide_with_updates(tmp_path):
    with make_logger(tmp_path) as logger:
        logger.log(0, {"eval/tier6/accuracy": 0.1}, kind="eval")
        for sft_step in (1, 2, 3):
            logger.log_sft(sft_step, {"sft/loss": 1.0 / sft_step})
        logger.log_sft(3, {"sft/post_format_compliance": 0.9, "sft/post_mean_reward": 0.4})
        with pytest.raises(ValueError, match="sft/step"):
            logger.log_sft(2, {"sft/loss": 0.1})
        with pytest.raises(ValueError, match="sft/step"):
            logger.log(0, {"sft/loss": 0.1}, kind="sft")
        with pytest.raises(ValueError, match="use step 0"):
            logger.log(1, {"sft/step": 4, "sft/loss": 0.1}, kind="sft")
        logger.log(1, {"reward/mean": 0.5})
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    sft = [r for r in rows if r["kind"] == "sft"]
    assert [r["sft/step"] for r in sft] == [1, 2, 3, 3] and {r["step"] for r in sft} == {0}
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1]


@pytest.mark.parametrize(
    "step, metrics, kind, match",
    [
        (1, {"reward/mean": 1.0}, "rl", "kind must be one of"),
        (-1, {"reward/mean": 1.0}, "train", "step must be an int"),
        (1.5, {"reward/mean": 1.0}, "train", "step must be an int"),
        (1, {"step": 3}, "train", "reserved"),
    ],
)
def test_bad_rows_are_rejected(tmp_path, step, metrics, kind, match):
    with make_logger(tmp_path) as logger, pytest.raises(ValueError, match=match):
        logger.log(step, metrics, kind=kind)


def test_non_numeric_metric_is_rejected(tmp_path):
    with make_logger(tmp_path) as logger, pytest.raises(TypeError, match="'reward/mean' must be a number"):
        logger.log(1, {"reward/mean": [0.5]})


def test_existing_log_without_resume_is_refused(tmp_path):
    with make_logger(tmp_path) as logger:
        logger.log(1, {"reward/mean": 0.5})
    with pytest.raises(FileExistsError, match="--resume"):
        make_logger(tmp_path)


def test_resume_truncates_rows_after_the_checkpoint(tmp_path):
    with make_logger(tmp_path) as logger:
        logger.log(0, {"eval/tier6/accuracy": 0.1}, kind="eval")
        logger.log_sft(1, {"sft/loss": 2.0})
        for step in range(1, 6):
            logger.log(step, {"reward/mean": step / 10})
            logger.log_samples([{"update": step, "group": g} for g in range(2)])
            if step >= 4:
                logger.log(step, {"eval/tier6/accuracy": step / 10}, kind="eval")
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "kind": "tra')  # torn line of a run killed mid-write

    with make_logger(tmp_path, resume=True, resume_step=4) as logger:
        assert logger.last_step == 4
        with pytest.raises(ValueError, match="one train row per update"):
            logger.log(4, {"reward/mean": 0.0})
        logger.log(5, {"reward/mean": 0.55})
    rows = strict_rows(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"]) for r in rows] == [
        ("eval", 0), ("sft", 0), ("train", 1), ("train", 2), ("train", 3), ("train", 4), ("eval", 4), ("train", 5),
    ]  # fmt: skip
    assert rows[-1]["reward/mean"] == 0.55
    assert sorted({s["update"] for s in read_jsonl(tmp_path / "samples.jsonl")}) == [1, 2, 3, 4]


def test_resume_without_step_keeps_everything_and_continues_the_counter(tmp_path):
    with make_logger(tmp_path) as logger:
        logger.log(3, {"reward/mean": 0.3})
    with make_logger(tmp_path, resume=True) as logger:
        with pytest.raises(ValueError, match="never goes backwards"):
            logger.log(2, {"eval/tier6/accuracy": 0.2}, kind="eval")
        logger.log(4, {"reward/mean": 0.4})
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [3, 4]


def test_log_samples_appends_records(tmp_path):
    with make_logger(tmp_path) as logger:
        logger.log_samples([{"update": 1, "group": 0, "reward": 0.5, "finish_reason": "stop"}])
        logger.log_samples([{"update": 1, "group": 1, "reward": 1.0, "finish_reason": "length"}])
    assert [s["group"] for s in read_jsonl(tmp_path / "samples.jsonl")] == [0, 1]


# --- Weights & Biases ----------------------------------------------------------------------------


def test_wandb_requested_but_missing_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        make_logger(tmp_path, wandb=True)


def test_without_wandb_nothing_imports_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with make_logger(tmp_path) as logger:
        logger.log(1, {"reward/mean": 0.5})


class RecordingWandbRun:
    def __init__(self, **init_kwargs):
        self.init_kwargs, self.defined, self.logged, self.finished = init_kwargs, {}, [], False

    def define_metric(self, name, step_metric=None):
        self.defined[name] = step_metric

    def log(self, data):
        self.logged.append(dict(data))

    def finish(self):
        self.finished = True


def fake_wandb_module(runs: list) -> types.ModuleType:
    module = types.ModuleType("wandb")

    def init(**kwargs):
        runs.append(RecordingWandbRun(**kwargs))
        return runs[-1]

    module.init = init
    return module


def test_wandb_gets_separate_axes_for_sft_and_updates(tmp_path, monkeypatch):
    runs: list[RecordingWandbRun] = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb_module(runs))
    monkeypatch.setenv("WANDB_MODE", "offline")
    with make_logger(tmp_path, wandb=True) as logger:
        logger.log(0, {"eval/tier6/accuracy": 0.1}, kind="eval")
        logger.log_sft(1, {"sft/loss": 2.0})
        logger.log(1, {"reward/mean": 0.5, "loss/policy": float("nan")})
    (run,) = runs
    assert run.init_kwargs["mode"] == "offline" and run.init_kwargs["config"] == {"lr": 1e-5}
    assert run.init_kwargs["dir"] == str(tmp_path) and run.finished
    assert run.defined == {
        "update": None,
        "sft/step": None,
        "eval/tier6/accuracy": "update",
        "sft/loss": "sft/step",
        "reward/mean": "update",
    }
    # No implicit wandb step is ever passed; update rows carry "update", SFT rows only "sft/step".
    assert run.logged == [
        {"eval/tier6/accuracy": 0.1, "update": 0},
        {"sft/step": 1, "sft/loss": 2.0},
        {"reward/mean": 0.5, "update": 1},
    ]


def test_wandb_resume_reuses_the_run_id(tmp_path, monkeypatch):
    runs: list[RecordingWandbRun] = []
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb_module(runs))
    with make_logger(tmp_path, wandb=True, wandb_mode="disabled") as logger:
        logger.log(1, {"reward/mean": 0.5})
    with make_logger(tmp_path, wandb=True, resume=True, resume_step=1):
        pass
    assert runs[0].init_kwargs["mode"] == "disabled"
    run_id = (tmp_path / "wandb_run_id.txt").read_text().strip()
    assert re.fullmatch(r"[a-z0-9]{8}", run_id)
    assert runs[0].init_kwargs["id"] == runs[1].init_kwargs["id"] == run_id


# --- console -------------------------------------------------------------------------------------

FULL_UPDATE = {
    "reward/mean": 0.6234,
    "reward/std": 0.2081,
    "reward/exact_fraction": 0.375,
    "reward/format_compliance": 0.96875,
    "groups/zero_variance_fraction": 0.25,
    "loss/policy": -0.01304,
    "grad/norm": 0.4213,
    "tokens/completion_mean": 141.6,
    "tokens/truncated_fraction": 0.03125,
    "time/update_s": 28.14,
    "time/rollout_s": 20.31,
    "time/train_s": 7.79,
    "engine/tokens_per_s": 512.4,
    "memory/peak_gb": 12.345,
}


def test_update_line_with_every_metric():
    assert format_update_line(12, 50, FULL_UPDATE) == (
        "update 12/50 | reward 0.62±0.21 exact 0.38 fmt 0.97 | zero-var 0.25 | loss -0.013 | gnorm 0.421 | "
        "len 142 trunc 0.03 | 28.1s (roll 20.3 train 7.8) | 512 tok/s | mem 12.3GB"
    )


def test_update_line_skips_missing_metrics():
    assert format_update_line(3, 10, {}) == "update 3/10"
    partial = {
        "reward/mean": 0.5,
        "loss/policy": float("nan"),
        "time/rollout_s": 2.0,
        "lr": 1e-5,
        "note": "x",
    }
    assert format_update_line(3, 10, partial) == "update 3/10 | reward 0.50 | loss nan | roll 2.0s"
    assert format_update_line(3, 10, {"time/update_s": 4.0, "reward/std": None}) == "update 3/10 | 4.0s"


def eval_metrics(tier: int, correct: int, n: int) -> dict[str, float]:
    low, high = wilson_interval(correct, n)
    p = f"eval/tier{tier}/"
    return {
        p + "accuracy": correct / n,
        p + "accuracy_low": low,
        p + "accuracy_high": high,
        p + "format_compliance": 0.97,
        p + "reward_mean": 0.712,
        p + "n": float(n),
    }


def test_eval_lines_one_per_tier_in_numeric_order():
    metrics = eval_metrics(10, 0, 10) | eval_metrics(2, 5, 10)
    assert format_eval_lines(12, metrics) == [
        "eval @ update 12 | tier 2: accuracy 0.500 [0.237, 0.763] n=10 | format 0.97 | reward 0.712",
        "eval @ update 12 | tier 10: accuracy 0.000 [0.000, 0.278] n=10 | format 0.97 | reward 0.712",
    ]
    assert format_eval_lines(0, {"eval/tier3/accuracy": 0.25}) == ["eval @ update 0 | tier 3: accuracy 0.250"]


def test_sft_line():
    assert format_sft_line(10, 50, {"sft/loss": 0.84213}) == "sft 10/50 | loss 0.8421"
    post = {"sft/post_format_compliance": 0.9, "sft/post_mean_reward": 0.4412}
    assert format_sft_line(50, 50, post) == "sft 50/50 | post-sft format 0.90 | post-sft reward 0.441"


def test_progress_off_a_terminal_prints_plain_lines():
    out = io.StringIO()
    with UpdateProgress(2, console=Console(file=out)) as progress:
        assert not progress.interactive
        progress.update(1, {"reward/mean": 0.5})
        progress.eval(1, eval_metrics(6, 5, 10))
        progress.update(2, FULL_UPDATE)
    lines = out.getvalue().splitlines()
    assert lines == [
        "update 1/2 | reward 0.50",
        "eval @ update 1 | tier 6: accuracy 0.500 [0.237, 0.763] n=10 | format 0.97 | reward 0.712",
        format_update_line(2, 2, FULL_UPDATE),
    ]
    assert "\x1b[" not in out.getvalue()  # no escape codes in CI logs


def test_progress_on_a_terminal_draws_a_bar_and_keeps_the_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with UpdateProgress(4, console=console) as progress:
        assert progress.interactive
        progress.update(1, {"reward/mean": 0.5})
        progress.eval(1, eval_metrics(6, 5, 10))
    text = out.getvalue()
    assert "update 1/4 | reward 0.50" in text
    assert "[0.237, 0.763]" in text  # printed as text, not swallowed as rich markup
    assert "1/4" in text and "updates" in text  # the bar with its M/N counter
