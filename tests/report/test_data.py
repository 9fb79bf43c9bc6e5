"""What the report reads from a run folder: groups, zero variance, answer diffs, eval tasks, tables."""

import json
import re

from picorl.report.data import answer_diff, load_run
from picorl.report.page import write_report
from tests.report.run_folder import XSS, write_eval_samples_file, write_run


def test_groups_of_k_with_zero_variance_flags(tmp_path):
    written = write_run(tmp_path / "run")
    data = load_run(tmp_path / "run")
    groups = {(g["step"], g["group"]): g for g in data["rollouts"]}
    assert sorted(groups) == [(u, g) for u in (1, 2) for g in range(3)]
    assert all(len(g["members"]) == 4 for g in groups.values())
    assert [groups[(1, g)]["zero_variance"] for g in range(3)] == [True, False, True]
    mixed = groups[(1, 1)]
    source = [r for r in written["samples"] if (r["update"], r["group"]) == (1, 1)]
    assert [m["reward"] for m in mixed["members"]] == [r["reward"] for r in source]
    assert [m["advantage"] for m in mixed["members"]] == [r["advantage"] for r in source]
    assert mixed["expected"] == source[0]["expected"] and mixed["tier"] == source[0]["tier"]
    assert "How many" in mixed["prompt"] or "Count" in mixed["prompt"]


def test_answer_diff_counts_given_minus_expected():
    assert answer_diff({"r": 3}, {"r": 5}) == [{"letter": "r", "expected": 3, "given": 5, "delta": 2}]
    assert answer_diff({"a": 1, "b": 2}, {"a": 1, "z": 4}) == [
        {"letter": "a", "expected": 1, "given": 1, "delta": 0},
        {"letter": "b", "expected": 2, "given": None, "delta": None},
        {"letter": "z", "expected": None, "given": 4, "delta": None},
    ]
    assert answer_diff({"r": 3}, None)[0]["given"] is None


def test_eval_tasks_side_by_side_across_steps(tmp_path):
    write_run(tmp_path / "run")
    data = load_run(tmp_path / "run")
    assert len(data["evals"]) == 3
    for task in data["evals"]:
        assert [m["step"] for m in task["members"]] == [0, 2]
    assert [m["correct"] for t in data["evals"] for m in t["members"]] == [
        False,
        True,
        False,
        True,
        False,
        False,
    ]
    (row0, row2) = data["eval_table"]["rows"]
    assert data["eval_table"]["tiers"] == [1] and row2["step"] == 2
    assert row2["cells"]["1"]["accuracy"] == 2 / 3 and row2["cells"]["1"]["high"] == 0.94


def test_eval_samples_file_is_preferred(tmp_path):
    written = write_run(tmp_path / "run")
    write_eval_samples_file(tmp_path / "run", written["evals"][:2])  # only step 0's first two tasks
    data = load_run(tmp_path / "run")
    assert [(t["task_seed"], [m["step"] for m in t["members"]]) for t in data["evals"]] == [
        (7001, [0]),
        (7002, [0]),
    ]


def test_old_rows_without_expected_are_rescored_from_the_task_seed(tmp_path):
    written = write_run(tmp_path / "run")
    samples = tmp_path / "run" / "samples.jsonl"
    old = [{k: v for k, v in json.loads(line).items() if k not in ("expected", "parsed", "tier")}
           for line in samples.read_text().splitlines()]  # fmt: skip
    samples.write_text("".join(json.dumps(r) + "\n" for r in old))
    data = load_run(tmp_path / "run")
    by_key = {(g["step"], g["group"]): g for g in data["rollouts"]}
    for row in written["samples"]:
        group = by_key[(row["update"], row["group"])]
        assert group["expected"] == row["expected"] and group["tier"] == row["tier"]
    assert by_key[(1, 0)]["members"][0]["diff"][0]["delta"] == 0


def test_page_is_self_contained_and_model_text_cannot_escape(tmp_path):
    write_run(tmp_path / "run")
    path = write_report(tmp_path / "run", replot=True)
    html = path.read_text()
    assert XSS not in html and "window.pwned" in html  # present, but only as escaped JSON
    assert html.count("</script>") == 2  # the data block's and the code's: nothing closes them early
    markup = re.sub(r'<script type="application/json" id="report-data">.*?</script>', "", html, flags=re.S)
    urls = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]+)""", markup)
    assert urls and all(url.startswith("data:") for url in urls), urls  # the curves, inlined
    assert not re.search(r"https?://", markup)


def test_labelled_steps_and_stages_from_other_writers(tmp_path):
    written = write_run(tmp_path / "run")
    rows = [dict(r, update=0) for r in written["evals"][:1]]
    rows[0]["stage"] = "base"
    write_eval_samples_file(tmp_path / "run", rows + [dict(written["evals"][0], update="base")])
    (task,) = load_run(tmp_path / "run")["evals"]
    assert [(m["step"], m["stage"]) for m in task["members"]] == [(0, "base"), ("base", "")]
