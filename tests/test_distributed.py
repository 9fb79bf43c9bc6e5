"""picorl.distributed: the no-op path in one process, the metric rules, and the collectives on two
gloo processes (torch.multiprocessing)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from picorl import distributed


def test_one_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init("cpu") is False and not distributed.active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.rank_seed(7) == 7
    assert distributed.main_first(lambda: 3) == 3
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_objects(5) == [5] and distributed.gather_to_main(5) == [5]
    assert distributed.all_reduce_sum(2.5) == 2.5 and distributed.all_reduce_min(2.0) == 2.0
    assert distributed.any_rank(False) is False and distributed.any_rank(True) is True
    metrics = {"loss": 1.0}
    assert distributed.reduce_metrics(metrics, 3.0, {}) is metrics
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    distributed.all_reduce_gradients([p])
    distributed.broadcast_parameters([p])
    assert p.grad.tolist() == [3.0, 3.0] and p.tolist() == [1.0, 1.0]
    assert distributed.local_device(torch.device("cpu")) == torch.device("cpu")


def test_shards_are_contiguous_and_cover_everything():
    items = list(range(7))
    parts = [distributed.shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert distributed.shard([1], 1, 2) == []  # more ranks than items: some get none


def test_combine_metrics_follows_each_keys_rule():
    parts = [
        (1.0, {"reward/mean": 1.0, "time/update_s": 2.0, "n": 3.0, "top": 5.0, "low": 1.0, "lr": 0.1}),
        (3.0, {"reward/mean": 0.0, "time/update_s": 4.0, "n": 1.0, "top": 2.0, "low": -1.0, "lr": 0.1, "x": 7.0}),
    ]
    rules = {"time/": "max", "n": "sum", "top": "max", "low": "min", "lr": "first"}
    out = distributed.combine_metrics(parts, rules)
    assert out == {
        "reward/mean": pytest.approx(0.25),  # weighted by each rank's count
        "time/update_s": 4.0,
        "n": 4.0,
        "top": 5.0,
        "low": -1.0,
        "lr": 0.1,
        "x": 7.0,  # only one rank has it
    }
    assert distributed.rule_for("time/a/b", {"time/": "max", "time/a/": "min"}) == "min"
    assert distributed.rule_for("other", {"*": "sum"}) == "sum"


def _two_ranks(rank: int, store: str, results: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        out = {}
        p = torch.nn.Parameter(torch.zeros(3))
        q = torch.nn.Parameter(torch.zeros(2, 2))
        p.grad = torch.full((3,), float(rank + 1))  # q has no gradient on either rank: zeros
        distributed.all_reduce_gradients([p, q])
        out["grad"] = p.grad.tolist()
        out["q_grad"] = q.grad.tolist()
        with torch.no_grad():
            p.fill_(float(rank))
        distributed.broadcast_parameters([p])
        out["param"] = p.tolist()
        out["sum"] = distributed.all_reduce_sum(rank + 1)
        out["min"] = distributed.all_reduce_min(rank + 1)
        out["any"] = distributed.any_rank(rank == 1)
        out["metrics"] = distributed.reduce_metrics(
            {"mean": float(rank), "t/x": float(rank), **({"only1": 9.0} if rank else {})},
            1.0 + rank,
            {"t/": "max"},
        )
        out["gathered"] = distributed.gather_to_main(rank * 10)
        out["everyone"] = distributed.all_gather_objects(rank)
        out["first"] = distributed.main_first(lambda: rank)
        try:
            distributed.main_first(lambda: (_ for _ in ()).throw(ValueError("no run here")))
        except ValueError as e:
            out["error"] = str(e)
        torch.save(out, f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


def test_collectives_on_two_gloo_ranks(tmp_path):
    mp.spawn(_two_ranks, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"out.{r}") for r in range(2))
    for r in (r0, r1):
        assert r["grad"] == [3.0, 3.0, 3.0], "gradients are summed"
        assert r["q_grad"] == [[0.0, 0.0], [0.0, 0.0]]
        assert r["param"] == [0.0, 0.0, 0.0], "rank 0's weights everywhere"
        assert (r["sum"], r["min"], r["any"]) == (3.0, 1.0, True)
        assert r["metrics"] == {"mean": pytest.approx(2 / 3), "t/x": 1.0, "only1": 9.0}
        assert r["everyone"] == [0, 1]
        assert "no run here" in r["error"], "rank 0's refusal reaches every rank"
    assert r0["gathered"] == [0, 10] and r1["gathered"] is None
    assert (r0["first"], r1["first"]) == (0, 1)
