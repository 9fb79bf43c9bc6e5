"""``picorl compare``: paired counts, McNemar p, point selection, the CLI and a committed real run."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from picorl.cli import main
from picorl.eval.compare import (
    compare,
    format_table,
    mcnemar_p,
    parse_point,
    read_eval_samples,
    select,
)
from picorl.logging.stats import wilson_interval

REAL_RUN = Path(__file__).resolve().parents[2] / "docs/results/2026-12-02b/count-rl"


def rows(stage: str, step: int, tier: int, correct: list[bool], seed0: int = 1000) -> list[dict]:
    """One eval point's rows: task i of ``tier`` has seed ``seed0 + i``."""
    return [
        {"step": step, "stage": stage, "tier": tier, "task_seed": seed0 + i, "correct": c}
        for i, c in enumerate(correct)
    ]


def write_run(run: Path, all_rows: list[dict], gz: bool = False) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in all_rows)
    if gz:
        with gzip.open(run / "eval_samples.jsonl.gz", "wt") as f:
            f.write(text)
    else:
        (run / "eval_samples.jsonl").write_text(text)
    return run


def test_mcnemar_exact_values():
    assert mcnemar_p(0, 12) == pytest.approx(2 / 2**12)  # 0.000488
    assert mcnemar_p(12, 0) == mcnemar_p(0, 12)  # two-sided: symmetric
    assert mcnemar_p(3, 11) == pytest.approx(2 * (1 + 14 + 91 + 364) / 2**14)  # 0.0574
    assert mcnemar_p(3, 11) == pytest.approx(0.0574, abs=1e-4)
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 5) == 1.0  # min(1, ...) caps the doubled tail


def test_compare_counts_accuracies_and_p():
    # Tier 6: 12 tasks right before, wrong after (broken), 8 right at both; tier 7: 3 fixed, 11 broken.
    a = rows("sft", 0, 6, [True] * 20) + rows("sft", 0, 7, [False] * 3 + [True] * 11 + [False] * 6)
    b = rows("rl", 20, 6, [False] * 12 + [True] * 8) + rows("rl", 20, 7, [True] * 3 + [False] * 17)
    t6, t7 = compare(a, "sft", a + b, 20)
    assert (t6.tier, t6.n, t6.correct_a, t6.correct_b, t6.fixed, t6.broken) == (6, 20, 20, 8, 0, 12)
    assert t6.p_value == pytest.approx(2 / 2**12)
    assert (t7.tier, t7.n, t7.correct_a, t7.correct_b, t7.fixed, t7.broken) == (7, 20, 11, 3, 3, 11)
    assert t7.p_value == pytest.approx(0.0574, abs=1e-4)
    table = format_table([t6, t7], "sft", "step 20")
    low, high = wilson_interval(8, 20)
    assert (
        f"| 6 | 20 | 1.000 [{wilson_interval(20, 20)[0]:.3f}, 1.000] | 0.400 [{low:.3f}, {high:.3f}]" in table
    )
    assert "| 0 / 12 | 0.000488 |" in table and "| 3 / 11 | 0.0574 |" in table
    assert "| all | 40 |" in table and "| 3 / 23 |" in table  # pooled over tiers


def test_pairing_ignores_tasks_on_one_side_only():
    a = rows("base", 0, 6, [True, False, True, True])  # seeds 1000..1003
    b = rows("rl", 5, 6, [True, True, False], seed0=1001) + rows("rl", 5, 9, [True])  # 1001..1003; tier 9
    (t6,) = compare(a, "base", b, "last")
    # Paired: 1001 (F->T fixed), 1002 (T->T), 1003 (T->F broken); seed 1000 and tier 9 are left out.
    assert (t6.n, t6.correct_a, t6.correct_b, t6.fixed, t6.broken) == (3, 2, 2, 1, 1)
    with pytest.raises(ValueError, match="share no"):
        compare(a, "base", rows("rl", 5, 6, [True], seed0=5), 5)


def test_point_selection():
    data = rows("base", 0, 6, [False]) + rows("sft", 0, 6, [True]) + rows("rl", 10, 6, [False])
    data += rows("rl", 20, 6, [True])
    assert select(data, "last")[0] == "step 20"
    assert select(data, 10)[0] == "step 10"
    assert select(data, 0) == ("sft", {(6, 1000): True})  # step 0: the policy RL started from
    assert select(data[:1], 0)[0] == "base" and select(data[:2], "last")[0] == "sft"
    with pytest.raises(ValueError, match=r"no step 30 eval.*base, sft, 10, 20"):
        select(data, 30)
    assert parse_point(" SFT ") == "sft" and parse_point("20") == 20
    with pytest.raises(ValueError, match="unknown eval point"):
        parse_point("-3")


def test_read_eval_samples_dir_file_and_gz(tmp_path):
    data = rows("base", 0, 6, [True, False])
    plain, zipped = write_run(tmp_path / "a", data), write_run(tmp_path / "b", data, gz=True)
    with (plain / "eval_samples.jsonl").open("a") as f:
        f.write('{"step": 0, "sta')  # the torn last line of a killed run
    assert read_eval_samples(plain) == read_eval_samples(zipped / "eval_samples.jsonl.gz") == data
    with pytest.raises(FileNotFoundError, match="no eval_samples"):
        read_eval_samples(tmp_path)


def test_cli_prints_table(tmp_path, capsys):
    data = rows("base", 0, 6, [False] * 4) + rows("sft", 0, 6, [True, True, False, False])
    run = write_run(tmp_path / "run", data + rows("rl", 10, 6, [True, True, True, False]))
    assert main(["compare", str(run)]) == 0  # default: sft -> last
    out = capsys.readouterr().out
    assert out.startswith("sft (A) -> step 10 (B)")
    assert "| 6 | 4 | 0.500 [" in out and "| 0.750 [" in out and "| 1 / 0 | 1 |" in out
    other = write_run(tmp_path / "other", rows("rl", 7, 6, [True] * 4))
    assert main(["compare", str(run), "--from", "base", "--against", str(other)]) == 0
    assert "run base (A) -> other step 7 (B)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--to", "30"], "no step 30 eval in these samples; pick one of: base, sft, 10"),
        (["--from", "first"], "unknown eval point 'first'"),
        (["--against", "missing"], "missing does not exist; pass runs/NAME"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    data = rows("base", 0, 6, [False]) + rows("sft", 0, 6, [True]) + rows("rl", 10, 6, [True])
    run = write_run(tmp_path / "run", data)
    assert main(["compare", str(run), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and captured.err.count("\n") == 1


def test_real_run_sft_vs_step_20(capsys):
    """The committed count-rl run: RL to step 20 broke more tasks than it fixed, at every tier."""
    data = read_eval_samples(REAL_RUN)
    results = compare(data, "sft", data, 20)
    assert [(r.tier, r.n, r.fixed, r.broken) for r in results] == [
        (6, 200, 0, 12),
        (7, 200, 3, 11),
        (8, 200, 6, 32),
    ]
    assert main(["compare", str(REAL_RUN), "--from", "sft", "--to", "20"]) == 0
    assert "| 8 | 200 | 0.645 [" in capsys.readouterr().out
