import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from picorl.logging.metrics import MetricsLogger, read_jsonl
from picorl.logging.plots import build_figure, panel_titles, plot_training_curves
from picorl.logging.stats import wilson_interval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_PANELS = [
    "reward (mean ± std)",
    "exact-match fraction (train)",
    "format compliance",
    "zero-variance groups",
    "eval accuracy (95% Wilson)",
    "grad norm",
    "policy loss",
    "time per update (s)",
    "peak GPU memory (GB)",
    "completion tokens & truncation",
    "engine vs trainer logprob diff",
    "engine throughput (tok/s)",
    "learning rate",
    "SFT loss",
]
TIERS_CORRECT = {5: (40, 60), 6: (10, 30)}  # tier -> (correct at step 0, correct at the last eval), of 50


def train_metrics(step: int) -> dict[str, float]:
    reward = 0.3 + 0.02 * step
    return {
        "reward/mean": reward,
        "reward/std": 0.1 + 0.01 * step,
        "reward/exact_fraction": reward / 2,
        "reward/format_compliance": 0.9,
        "groups/zero_variance_fraction": 0.25,
        "advantage/mean_abs": 0.2,
        "loss/policy": -0.01 * step,
        "grad/norm": 0.5,
        "lr": 1e-5,
        "tokens/completion_mean": 100.0 + step,
        "tokens/truncated_fraction": 0.05,
        "time/rollout_s": 2.0,
        "time/train_s": 1.0,
        "time/update_s": 3.1,
        "memory/peak_gb": 4.2,
        "engine/tokens_per_s": 300.0,
        "engine/logprob_diff_mean": 1e-3,
        "engine/logprob_diff_max": 1e-2,
    }


def eval_metrics(step: int, last_step: int) -> dict[str, float]:
    metrics = {}
    for tier, (first, last) in TIERS_CORRECT.items():
        correct = first + (last - first) * step // last_step
        low, high = wilson_interval(correct, 100)
        p = f"eval/tier{tier}/"
        metrics |= {p + "accuracy": correct / 100, p + "accuracy_low": low, p + "accuracy_high": high}
        metrics |= {p + "format_compliance": 0.8, p + "reward_mean": 0.5, p + "n": 100.0}
    return metrics


def write_run(run_dir, num_updates: int = 12, eval_every: int = 4, sft_steps: int = 5):
    with MetricsLogger(run_dir, run_name="synthetic", config={}) as logger:
        logger.log(0, eval_metrics(0, num_updates), kind="eval")
        for sft_step in range(1, sft_steps + 1):
            logger.log_sft(sft_step, {"sft/loss": 2.0 / sft_step})
        if sft_steps:
            logger.log_sft(sft_steps, {"sft/post_format_compliance": 0.9, "sft/post_mean_reward": 0.4})
        for step in range(1, num_updates + 1):
            logger.log(step, train_metrics(step))
            if step % eval_every == 0 or step == num_updates:
                logger.log(step, eval_metrics(step, num_updates), kind="eval")
    return run_dir / "metrics.jsonl"


def axis(fig: Figure, title: str):
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


def test_full_run_draws_every_panel(tmp_path):
    out = tmp_path / "training_curves.png"
    titles = plot_training_curves(write_run(tmp_path), out)
    assert titles == ALL_PANELS
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 50_000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_eval_panel_error_bars_are_the_wilson_intervals(tmp_path):
    rows = read_jsonl(write_run(tmp_path))
    ax = axis(build_figure(rows), "eval accuracy (95% Wilson)")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["tier 5", "tier 6"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert len(ax.containers) == 2
    for container, tier in zip(ax.containers, (5, 6)):
        bars = container.lines[2][0].get_segments()
        p = f"eval/tier{tier}/accuracy"
        expected = [[(r["step"], r[p + "_low"]), (r["step"], r[p + "_high"])] for r in evals]
        assert np.asarray(bars) == pytest.approx(np.asarray(expected))
    assert len(ax.collections) >= 2  # one interval band per tier


def test_reward_band_spans_mean_plus_minus_std(tmp_path):
    rows = read_jsonl(write_run(tmp_path))
    ax = axis(build_figure(rows), "reward (mean ± std)")
    (band,) = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    train = [r for r in rows if r["kind"] == "train"]
    assert min(ys) == pytest.approx(min(r["reward/mean"] - r["reward/std"] for r in train))
    assert max(ys) == pytest.approx(max(r["reward/mean"] + r["reward/std"] for r in train))


def test_sft_panel_uses_the_sft_step_axis(tmp_path):
    ax = axis(build_figure(read_jsonl(write_run(tmp_path, sft_steps=5))), "SFT loss")
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5]
    assert list(line.get_ydata()) == pytest.approx([2.0 / s for s in range(1, 6)])
    assert ax.get_xlabel() == "SFT step"
    assert "post-SFT format 0.90" in ax.texts[0].get_text()


def test_single_train_row(tmp_path):
    out = tmp_path / "curves.png"
    with MetricsLogger(tmp_path, run_name="one", config={}) as logger:
        logger.log(1, train_metrics(1))
    titles = plot_training_curves(tmp_path / "metrics.jsonl", out)
    assert titles == [t for t in ALL_PANELS if t not in ("eval accuracy (95% Wilson)", "SFT loss")]
    assert out.read_bytes().startswith(PNG_MAGIC) and out.stat().st_size > 20_000


def test_only_the_step_zero_eval(tmp_path):
    with MetricsLogger(tmp_path, run_name="eval-only", config={}) as logger:
        logger.log(0, eval_metrics(0, 10), kind="eval")
    titles = plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png")
    assert titles == ["format compliance", "eval accuracy (95% Wilson)"]


def test_missing_metrics_and_bad_values_are_skipped(tmp_path):
    rows = [
        {"step": 1, "kind": "train", "reward/mean": 0.5},  # no std: a line without a band
        {"step": 2, "kind": "train", "reward/mean": None, "grad/norm": "n/a"},
        {"step": 3, "kind": "train", "reward/mean": math.nan, "grad/norm": 0.3},
    ]
    fig = build_figure(rows)
    assert panel_titles(fig) == ["reward (mean ± std)", "grad norm"]
    assert list(axis(fig, "reward (mean ± std)").get_lines()[0].get_xdata()) == [1]


def test_empty_or_missing_log_gives_a_placeholder(tmp_path):
    out = tmp_path / "curves.png"
    assert plot_training_curves(tmp_path / "metrics.jsonl", out) == []
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_torn_last_line_is_ignored(tmp_path):
    path = write_run(tmp_path, num_updates=3, eval_every=3, sft_steps=0)
    with path.open("a") as f:
        f.write('{"step": 4, "kind": "train", "reward/me')
    titles = plot_training_curves(path, tmp_path / "curves.png")
    assert "reward (mean ± std)" in titles and "SFT loss" not in titles


def test_failed_save_keeps_the_previous_png(tmp_path, monkeypatch):
    path, out = write_run(tmp_path, num_updates=2, eval_every=2), tmp_path / "curves.png"
    plot_training_curves(path, out)
    before = out.read_bytes()

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_training_curves(path, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl", "samples.jsonl"]
