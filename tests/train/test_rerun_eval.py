"""``picorl eval --run``: a run's saved adapter, its base model and eval sets, taken from the run."""

import pytest

from picorl.cli import main
from picorl.logging.metrics import read_jsonl

TRAIN = ["train", "--model", "tiny-qwen3", "--k", "4", "--num-tasks", "2", "--max-tokens", "8", "--eval-num-tasks",
         "2", "--eval-tiers", "1", "2", "--sft-steps", "0", "--micro-batch-size", "8", "--num-updates", "2",
         "--name", "rr"]  # fmt: skip


def test_rerun_reproduces_the_runs_final_eval_and_writes_beside_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(TRAIN) == 0
    run = tmp_path / "runs" / "rr"
    assert main(["eval", "--run", str(run)]) == 0
    (row,) = read_jsonl(run / "rerun_eval.jsonl")
    final = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "eval"][-1]
    assert row["step"] == final["step"] == 2 and row["stage"] == "rerun"
    metric_keys = [k for k in final if k.startswith("eval/tier")]
    assert {k for k in row if k.startswith("eval/tier")} == set(metric_keys)  # tiers 1 and 2, from the run
    for key in metric_keys:  # greedy, same weights, same fixed sets: the same numbers
        assert row[key] == pytest.approx(final[key]), key
    samples = read_jsonl(run / "rerun_eval_samples.jsonl")
    logged = [s for s in read_jsonl(run / "eval_samples.jsonl") if s["stage"] == "rl" and s["step"] == 2]
    assert len(samples) == 4 and [s["completion"] for s in samples] == [s["completion"] for s in logged]
    # flags override the run's settings; any saved adapter can be chosen
    assert main(["eval", "--run", str(run), "--eval-num-tasks", "3", "--eval-tiers", "1",
                 "--adapter", str(run / "checkpoint" / "model")]) == 0  # fmt: skip
    second = read_jsonl(run / "rerun_eval.jsonl")[1]
    assert second["eval/tier1/n"] == 3 and "eval/tier2/n" not in second and second["step"] == 2
    assert main(["report", str(run)]) == 0
    assert "rerun" in (run / "report.html").read_text()
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "nope")]) == 2
    assert "not a picorl run folder" in capsys.readouterr().err
