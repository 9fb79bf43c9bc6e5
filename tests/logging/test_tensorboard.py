"""``--tensorboard``: the event files hold every metric on metrics.jsonl's step axis, and eval text."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from picorl.logging.metrics import MetricsLogger, read_jsonl


def load(log_dir) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]


def test_every_metric_on_the_metrics_jsonl_step_axis(tmp_path):
    with MetricsLogger(tmp_path, run_name="tb", config={}, tensorboard=True) as log:
        log.log_sft(1, {"sft/loss": 3.0})
        log.log_sft(2, {"sft/loss": 2.0})
        log.log(0, {"eval/tier1/accuracy": 0.25, "eval/tier1/n": 4.0}, kind="eval")
        log.log_samples([
            {"update": 0, "kind": "eval", "tier": 1, "correct": False, "reward": 0.1,
             "expected": {"r": 3}, "completion": "I think | <answer>2</answer>"},
        ])  # fmt: skip
        log.log(1, {"reward/mean": 0.5, "loss/policy": -0.125, "lr": 1e-5, "done": True, "note": "x"})
        log.log(2, {"reward/mean": 0.75, "loss/policy": 0.25, "lr": 2e-5})
    events = load(tmp_path / "tensorboard")
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    numeric = {
        k for r in rows if r["kind"] != "sft" for k, v in r.items()
        if k not in ("step", "kind", "time") and isinstance(v, float)
    }  # fmt: skip
    assert numeric <= set(events.Tags()["scalars"])
    for key in numeric:  # same step and value as metrics.jsonl
        expected = [(r["step"], round(r[key], 6)) for r in rows if r["kind"] != "sft" and key in r]
        assert scalars(events, key) == expected, key
    assert "done" not in events.Tags()["scalars"] and "note" not in events.Tags()["scalars"]
    sft = load(tmp_path / "tensorboard" / "sft")  # the warm-up has its own axis (sft/step)
    assert scalars(sft, "sft/loss") == [(1, 3.0), (2, 2.0)]
    (text,) = events.Tensors("eval/samples/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert text.step == 0 and "<answer>2</answer>" in table and "I think \\| " in table


def test_resume_purges_the_events_after_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path, run_name="tb", config={}, tensorboard=True) as log:
        for step in (1, 2, 3):
            log.log(step, {"reward/mean": float(step)})
    with MetricsLogger(
        tmp_path, run_name="tb", config={}, tensorboard=True, resume=True, resume_step=1
    ) as log:
        log.log(2, {"reward/mean": 20.0})
    assert scalars(load(tmp_path / "tensorboard"), "reward/mean") == [(1, 1.0), (2, 20.0)]
