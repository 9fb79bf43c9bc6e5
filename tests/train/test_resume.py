"""A run survives kill -9, Ctrl-C, a full disk and changed flags: resumed, it equals an uninterrupted run.

"Equal" means the same metric rows (timings aside), the same samples and the same adapter weights.
Reference runs are shared per module; the interrupted ones run as real subprocesses where a real
signal is the point (kill -9, Ctrl-C).
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from picorl.cli import main
from picorl.config import build_config, dump_toml, resolve_auto
from picorl.logging.metrics import read_jsonl
from picorl.train.checkpoint import latest_checkpoint

REPO = Path(__file__).parents[2]
FAST = [
    "--model", "tiny-qwen3", "--k", "2", "--num-tasks", "2", "--max-tokens", "8", "--eval-num-tasks", "2",
    "--eval-tiers", "1", "--micro-batch-size", "4", "--sft-batch-size", "2", "--plot-interval-s", "1000",
    "--device", "cpu",  # "equal to an uninterrupted run" is a CPU guarantee (GPU kernels are not bit-exact)
]  # fmt: skip
SFT = ["--sft-steps", "4", "--num-updates", "2", "--save-every", "0"]
NO_SFT = ["--sft-steps", "0", "--num-updates", "3"]
VOLATILE = ("time", "time/", "engine/tokens_per_s", "sft/tokens_per_s", "memory/")


def train(runs, *args) -> int:
    return main(["train", *FAST, "--runs-dir", str(runs), *args])


def comparable(run: Path):
    rows = [
        {k: v for k, v in row.items() if not k.startswith(VOLATILE)}
        for row in read_jsonl(run / "metrics.jsonl")
    ]
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    return rows, read_jsonl(run / "samples.jsonl"), weights


def assert_same_run(a: Path, b: Path) -> None:
    rows_a, samples_a, weights_a = comparable(a)
    rows_b, samples_b, weights_b = comparable(b)
    assert [(r["kind"], r["step"], r.get("sft/step")) for r in rows_a] == [
        (r["kind"], r["step"], r.get("sft/step")) for r in rows_b
    ], "the same rows, none twice, none missing"
    for ra, rb in zip(rows_a, rows_b):
        assert ra.keys() == rb.keys()
        for key in ra:
            if isinstance(ra[key], float):
                assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["kind"], ra["step"], key)
            else:
                assert ra[key] == rb[key], key
    assert samples_a == samples_b
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs: with SFT (4 steps, 2 updates) and without (3 updates)."""
    runs = tmp_path_factory.mktemp("reference")
    assert train(runs, "--name", "sft", *SFT) == 0
    assert train(runs, "--name", "plain", *NO_SFT) == 0
    return runs


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- refused before anything is written ----------------------------------------------------------------


def test_resume_of_a_missing_run_is_an_error(tmp_path, capsys):
    assert train(tmp_path, "--name", "nope", "--resume") == 2
    assert "no run to resume" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert train(tmp_path, "--resume") == 2
    assert "--resume needs the run's name" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lora-rank", "8"], "model.lora_rank: saved 32, now 8"),
        (["--algo", "ppo"], "algo.algo: saved 'grpo', now 'ppo'"),
        (["--model", "tiny-llama"], "model.model: saved 'tiny-qwen3', now 'tiny-llama'"),
    ],
)
def test_changed_shape_algorithm_or_base_is_refused_before_any_file_changes(tmp_path, capsys, flags, message):
    run = tmp_path / "r"
    run.mkdir()
    config = resolve_auto(
        build_config({"model": {"model": "tiny-qwen3"}, "run": {"name": "r"}}), on_gpu=False
    )
    (run / "config.toml").write_text(dump_toml(config))
    (run / "metrics.jsonl").write_text('{"step": 0, "kind": "eval"}\n')
    before = snapshot(run)
    assert train(tmp_path, "--name", "r", "--resume", *flags) == 2
    err = capsys.readouterr().err
    assert message in err and "start a new run" in err and "Traceback" not in err
    assert snapshot(run) == before


def test_safe_changes_are_allowed_recorded_and_take_effect(tmp_path):
    assert train(tmp_path, "--name", "r", "--sft-steps", "0", "--num-updates", "1") == 0
    assert train(tmp_path, "--name", "r", "--resume", "--num-updates", "2", "--lr", "1e-5") == 0
    run = tmp_path / "r"
    (resume,) = read_jsonl(run / "resumes.jsonl")
    assert resume["from_update"] == 1
    assert resume["changes"] == {"train.num_updates": [1, 2], "train.lr": [2e-5, 1e-5]}
    assert "lr = 1e-05" in (run / "config.toml").read_text()
    train_rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2]
    # the new lr times the warm-up factor (warmup_steps 2) at the schedule's position, not the old 2e-5
    position = latest_checkpoint(run)[0].state["lr_scheduler"]["last_epoch"]
    assert train_rows[1]["lr"] == pytest.approx(1e-5 * min(1.0, (position + 1) / 3), rel=1e-9)


def test_kl_reference_is_the_start_policy_and_is_kept_through_a_resume(tmp_path):
    """--beta with kl_reference = start: the policy is its own reference when RL begins (KL exactly 0;
    to the base model it is not, since SFT moved the adapter), the checkpoint keeps that reference,
    and a resumed run measures KL to the saved one, not to a fresh copy of its weights."""
    kl = ["--sft-steps", "2", "--beta", "0.1"]
    assert train(tmp_path, "--name", "start", *kl, "--num-updates", "1") == 0
    assert train(tmp_path, "--name", "base", *kl, "--kl-reference", "base", "--num-updates", "1") == 0

    def kl_rows(run: str) -> list[float]:
        return [r["kl/mean"] for r in read_jsonl(tmp_path / run / "metrics.jsonl") if r["kind"] == "train"]

    assert kl_rows("start") == [0.0]
    assert kl_rows("base")[0] > 1e-6

    checkpoint = latest_checkpoint(tmp_path / "start")[0]
    reference = checkpoint.state["reference_weights"]
    sft = load_file(tmp_path / "start" / "sft_adapter" / "adapter_model.safetensors")
    assert {name.replace(".default", "") for name in reference} == set(sft)
    for name, value in reference.items():
        torch.testing.assert_close(value, sft[name.replace(".default", "")])

    # the saved reference, set to the base model's (B = 0), is what the resumed update is measured against
    state_file = checkpoint.folder / "trainer_state.pt"
    state = torch.load(state_file, weights_only=False)
    state["reference_weights"] = {k: v.zero_() if "lora_B" in k else v for k, v in reference.items()}
    torch.save(state, state_file)
    assert train(tmp_path, "--name", "start", *kl, "--num-updates", "2", "--resume") == 0
    assert kl_rows("start")[0] == 0.0 and kl_rows("start")[1] == pytest.approx(kl_rows("base")[0], rel=0.5)


def test_resume_with_a_kl_to_a_start_policy_the_checkpoint_lacks_is_refused(tmp_path, capsys):
    assert train(tmp_path, "--name", "r", "--sft-steps", "0", "--num-updates", "1") == 0
    before = snapshot(tmp_path / "r")
    assert train(tmp_path, "--name", "r", "--resume", "--num-updates", "2", "--beta", "0.1") == 2
    err = capsys.readouterr().err
    assert "holds no KL reference" in err and "--kl-reference base" in err and "Traceback" not in err
    assert snapshot(tmp_path / "r") == before
    assert train(tmp_path, "--name", "r", "--resume", "--num-updates", "2", "--beta", "0.1", "--kl-reference", "base") == 0


# --- kills and Ctrl-C -----------------------------------------------------------------------------------


def start(runs: Path, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "picorl.cli", "train", *FAST, "--runs-dir", str(runs), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(process: subprocess.Popen, prefix: str, stream=None) -> None:
    for line in stream or process.stdout:
        if line.strip().startswith(prefix):
            return
    raise AssertionError(f"the run ended before printing {prefix!r}: {process.stderr.read()[-2000:]}")


@pytest.mark.slow
def test_kill_9_during_sft_before_the_first_checkpoint_then_resume_equals_uninterrupted(reference, tmp_path):
    process = start(tmp_path, "--name", "k", *SFT)
    wait_for_line(process, "sft 1/4")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert train(tmp_path, "--name", "k", "--resume") == 0
    assert_same_run(reference / "sft", tmp_path / "k")


@pytest.mark.slow
def test_killed_before_the_first_checkpoint_with_rows_logged_resumes_equal(reference, tmp_path):
    """The issue's case: rows of the step-0 eval and updates were logged, no checkpoint yet (it used to
    restart silently and log the step-0 eval twice)."""
    shutil.copytree(reference / "plain", tmp_path / "p")
    for folder in ("checkpoint", "adapter"):
        shutil.rmtree(tmp_path / "p" / folder)
    assert train(tmp_path, "--name", "p", "--resume") == 0
    assert_same_run(reference / "plain", tmp_path / "p")


@pytest.mark.slow
def test_ctrl_c_saves_sft_progress_and_resume_from_checkpoint_old_equals_uninterrupted(reference, tmp_path):
    process = start(tmp_path, "--name", "c", *SFT)
    wait_for_line(process, "sft 1/4")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    run = tmp_path / "c"
    checkpoint, _ = latest_checkpoint(run)
    assert f"checkpoint at SFT step {checkpoint.state['sft_step']} in {run / 'checkpoint'}" in err
    assert "picorl train --name c --resume" in err
    assert checkpoint.state["phase"] == "sft" and 1 <= checkpoint.state["sft_step"] < 4
    # and a kill between the two renames of the next save would leave only checkpoint.old
    (run / "checkpoint").rename(run / "checkpoint.old")
    (run / "checkpoint.tmp").mkdir()
    assert train(tmp_path, "--name", "c", "--resume") == 0
    assert_same_run(reference / "sft", run)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once(tmp_path):
    process = start(tmp_path, "--name", "c2", *NO_SFT)
    wait_for_line(process, "picorl: run directory")
    process.send_signal(signal.SIGINT)
    wait_for_line(process, "Ctrl-C:", stream=process.stderr)  # handled: the next one is a second press
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert "stopped at once" in err and "Traceback" not in err


@pytest.mark.slow
def test_ppo_resume_restores_the_value_head_and_equals_uninterrupted(tmp_path):
    ppo = ["--algo", "ppo", "--sft-steps", "0", "--save-every", "1"]
    assert train(tmp_path, "--name", "full", *ppo, "--num-updates", "2") == 0
    assert train(tmp_path, "--name", "cut", *ppo, "--num-updates", "1") == 0  # stopped after update 1
    assert train(tmp_path, "--name", "cut", "--resume", "--num-updates", "2") == 0
    (full, _, weights_full), (cut, _, weights_cut) = (
        comparable(tmp_path / "full"),
        comparable(tmp_path / "cut"),
    )
    train_full, train_cut = (
        [r for r in full if r["kind"] == "train"],
        [r for r in cut if r["kind"] == "train"],
    )
    assert [r["step"] for r in train_cut] == [1, 2]
    for a, b in zip(train_full, train_cut):  # (the cut run also evaluated at its end, update 1)
        assert a["value/loss"] == pytest.approx(b["value/loss"], rel=1e-5)
        assert a["reward/mean"] == pytest.approx(b["reward/mean"], rel=1e-5)
    for name in weights_full:
        torch.testing.assert_close(weights_full[name], weights_cut[name], rtol=1e-5, atol=1e-6)
    heads = [latest_checkpoint(tmp_path / run)[0].state["value_head"] for run in ("full", "cut")]
    for name in heads[0]:
        torch.testing.assert_close(heads[0][name], heads[1][name], rtol=1e-5, atol=1e-6)


# --- disk errors ----------------------------------------------------------------------------------------


def test_full_disk_at_save_keeps_the_previous_checkpoint_and_exits_2(tmp_path, monkeypatch, capsys):
    real_save = torch.save
    calls = []

    def save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the checkpoint after update 1; the one at update 0 was written
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert train(tmp_path, "--name", "d", "--sft-steps", "0", "--num-updates", "2", "--save-every", "1") == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "is intact" in err and "Traceback" not in err
    checkpoint, _ = latest_checkpoint(tmp_path / "d")
    assert checkpoint.state["update"] == 0 and not (tmp_path / "d" / "checkpoint.tmp").exists()


def test_unwritable_runs_dir_is_a_clear_error(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert train(blocker, "--name", "x", "--sft-steps", "0", "--num-updates", "0") == 2
    assert "cannot write the run folder" in capsys.readouterr().err

    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if tmp_path / "ro" in (self, *self.parents):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert train(tmp_path / "ro", "--name", "x", "--sft-steps", "0", "--num-updates", "0") == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "--runs-dir" in err and "Traceback" not in err
