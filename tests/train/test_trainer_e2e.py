"""`picorl train` end to end on tiny-qwen3: every artifact, resume after a kill, `picorl eval`."""

import json

import pytest
from peft import PeftModel

from picorl.cli import main
from picorl.logging.metrics import read_jsonl
from picorl.models import load_model_and_tokenizer

FAST = [
    "--model", "tiny-qwen3", "--k", "4", "--num-tasks", "2", "--max-tokens", "12", "--eval-num-tasks", "3",
    "--eval-tiers", "1", "2", "--sft-steps", "2", "--sft-batch-size", "2", "--micro-batch-size", "4",
]  # fmt: skip


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_train_writes_every_artifact(in_tmp):
    assert main(["train", *FAST, "--num-updates", "3", "--name", "e2e", "--samples-every", "2"]) == 0
    run = in_tmp / "runs" / "e2e"
    for name in ("config.toml", "metrics.jsonl", "samples.jsonl", "training_curves.png"):
        assert (run / name).stat().st_size > 0, name
    rows = read_jsonl(run / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert [r["step"] for r in evals] == [0, 0, 3], "eval before anything, after SFT and at the end"
    assert [r["stage"] for r in evals] == ["base", "sft", "rl"]
    eval_samples = read_jsonl(run / "eval_samples.jsonl")
    assert len(eval_samples) == 3 * 2 * 3, "every eval episode: 3 evals x 2 tiers x 3 tasks"
    assert [(r["stage"], r["tier"]) for r in eval_samples[:6]] == [("base", 1)] * 3 + [("base", 2)] * 3
    for row in eval_samples:
        for key in ("prompt", "completion", "reward", "correct", "tier", "task_seed", "expected"):
            assert key in row, key
    accuracy = sum(r["correct"] for r in eval_samples if r["stage"] == "rl" and r["tier"] == 1) / 3
    assert evals[2]["eval/tier1/accuracy"] == accuracy, "eval_samples.jsonl re-scores to the metric"
    assert any(r["kind"] == "sft" and "sft/loss" in r for r in rows)
    for key in (
        "reward/mean", "reward/std", "reward/exact_fraction", "reward/format_compliance",
        "groups/zero_variance_fraction", "advantage/mean_abs", "loss/policy", "grad/norm", "lr",
        "tokens/completion_mean", "tokens/truncated_fraction", "time/rollout_s", "time/train_s", "time/update_s",
        "engine/tokens_per_s", "engine/logprob_diff_mean", "engine/logprob_diff_max",
        "time/engine_wake_s", "time/engine_sleep_s", "train/skipped_steps",
    ):  # fmt: skip
        assert key in train[0], key
    assert 0 <= train[0]["time/engine_wake_s"] + train[0]["time/engine_sleep_s"] < train[0]["time/rollout_s"]
    assert train[0]["train/skipped_steps"] == 0
    for suffix in ("accuracy", "accuracy_low", "accuracy_high", "format_compliance"):
        assert f"eval/tier1/{suffix}" in evals[0] and f"eval/tier2/{suffix}" in evals[0]
    # engine and trainer agree on the sampled tokens' log-probs (fp32 CPU: tiny differences only)
    assert train[0]["engine/logprob_diff_max"] < 1e-3
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    train_samples = [s for s in samples if s["kind"] == "train"]
    assert {s["update"] for s in train_samples} == {2} and len(train_samples) == 8
    for key in ("group", "prompt", "completion", "reward", "correct", "completion_tokens", "finish_reason"):
        assert key in train_samples[0]
    for s in train_samples:  # what the report's group browser shows beside each completion
        assert s["tier"] == 1 and isinstance(s["expected"], dict) and isinstance(s["advantage"], float)
    for group in {s["group"] for s in train_samples}:  # GRPO: advantages are centred in each group
        assert sum(s["advantage"] for s in train_samples if s["group"] == group) == pytest.approx(0, abs=1e-5)
    assert (run / "report.html").stat().st_size > 0
    model, _ = load_model_and_tokenizer("tiny-qwen3")
    adapted = PeftModel.from_pretrained(model, run / "adapter")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in adapted.named_parameters()), (
        "adapter was trained"
    )


def test_killed_run_resumes_and_matches_uninterrupted(in_tmp):
    assert main(["train", *FAST, "--num-updates", "4", "--name", "full", "--sft-steps", "0"]) == 0
    # a run stopped after update 2 (its last checkpoint), then resumed
    assert main(["train", *FAST, "--num-updates", "2", "--name", "cut", "--sft-steps", "0"]) == 0
    assert main(["train", *FAST, "--num-updates", "4", "--name", "cut", "--sft-steps", "0", "--resume"]) == 0
    full = [r for r in read_jsonl(in_tmp / "runs/full/metrics.jsonl") if r["kind"] == "train"]
    cut = [r for r in read_jsonl(in_tmp / "runs/cut/metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    for a, b in zip(full, cut):
        assert a["reward/mean"] == pytest.approx(b["reward/mean"])
        assert a["loss/policy"] == pytest.approx(b["loss/policy"], abs=1e-6)


def test_existing_run_is_not_overwritten(in_tmp, capsys):
    assert main(["train", *FAST, "--num-updates", "1", "--name", "x", "--sft-steps", "0"]) == 0
    assert main(["train", *FAST, "--num-updates", "1", "--name", "x", "--sft-steps", "0"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_eval_command_on_saved_adapter(in_tmp, capsys):
    assert main(["train", *FAST, "--num-updates", "1", "--name", "ev", "--sft-steps", "0"]) == 0
    code = main(["eval", "--model", "tiny-qwen3", "--adapter", "runs/ev/adapter", "--eval-tiers", "1",
                 "--eval-num-tasks", "3", "--max-tokens", "8", "--name", "ev"])  # fmt: skip
    assert code == 0
    out = json.loads((in_tmp / "runs/ev/eval.json").read_text())
    assert out["eval/tier1/n"] == 3 and 0 <= out["eval/tier1/accuracy"] <= 1
    assert main(["eval", "--model", "tiny-qwen3", "--adapter", "runs/nope"]) == 2
    assert "adapter folder runs/nope does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_the_cpu_default_runs_end_to_end_on_a_tiny_model(in_tmp):
    """`picorl train` with every size at its CPU default (only the model swapped for a tiny one)."""
    assert main(["train", "--model", "tiny-qwen3", "--name", "cpu-default", "--device", "cpu"]) == 0
    run = in_tmp / "runs" / "cpu-default"
    rows = read_jsonl(run / "metrics.jsonl")
    config = (run / "config.toml").read_text()
    assert 'cot = "scan"' in config and "sft_steps = 12" in config and "num_updates = 10" in config
    assert [r["stage"] for r in rows if r["kind"] == "eval"] == ["base", "sft", "rl"]
    assert len([r for r in rows if r["kind"] == "train"]) == 10
    assert len(read_jsonl(run / "eval_samples.jsonl")) == 3 * 2 * 24  # 3 evals, tiers 1-2, 24 tasks
    assert (run / "training_curves.png").stat().st_size > 0
