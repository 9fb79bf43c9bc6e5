"""``benchmarks/update.py --tiny --device cpu``: the whole-update benchmark runs and its last line parses."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["update_s_smollm2", "update_s_4b_512", "update_s_4b_2048", "peak_gib_4b_2048"]


def parse_last_line(line: str) -> dict[str, float]:
    pairs = dict(item.split("=") for item in line.split())
    assert list(pairs) == KEYS, line
    return {key: float(value) for key, value in pairs.items()}


@pytest.mark.slow
def test_update_benchmark_tiny_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "benchmarks/update.py", "--tiny", "--device", "cpu", "--profile", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    values = parse_last_line(result.stdout.strip().splitlines()[-1])
    for key in KEYS[:3]:
        assert values[key] > 0, values
    assert math.isnan(values["peak_gib_4b_2048"])  # no GPU: no peak memory
    assert (tmp_path / "train_smollm2_base.txt").read_text().startswith("train phase of one update")
    assert "rollout parts: wake" in result.stdout  # the rollout's fixed costs, split out


def test_last_line_of_shapes_not_run_reads_nan():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from update import last_line
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    values = parse_last_line(last_line({"smollm2": {"base": {"update_s": 0.5}}}, "base"))
    assert values["update_s_smollm2"] == 0.5 and math.isnan(values["update_s_4b_512"])
