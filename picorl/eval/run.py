"""``picorl eval``: evaluate a base model, or a saved adapter on its base model, on the fixed eval sets."""

from __future__ import annotations

import json
from pathlib import Path

from picorl.config import Config, resolve_auto
from picorl.eval.evaluate import evaluate
from picorl.logging.console import format_eval_lines
from picorl.models import load_model_and_tokenizer
from picorl.models.adapter import load_adapter
from picorl.runtime import env_factory, make_engine, pick_device


def run_eval(config: Config, adapter: str | None = None, console=print) -> dict[str, float]:
    device = pick_device(config.train.device)
    config = resolve_auto(config, on_gpu=device.type == "cuda")
    model, tokenizer = load_model_and_tokenizer(config.model.model, dtype=config.model.dtype, device=device)
    if adapter is not None:  # checked first: the folder's files, then that it belongs to this base model
        model = load_adapter(model, adapter, config.model.model)
    engine = make_engine(config, model, tokenizer, device)
    metrics, _ = evaluate(
        engine, tokenizer, lambda tier: env_factory(config, [tier])(),
        tiers=config.eval.eval_tiers, num_tasks=config.eval.eval_num_tasks, eval_seed=config.eval.eval_seed,
        max_tokens=config.eval.eval_max_tokens,
    )  # fmt: skip
    console(f"eval of {config.model.model}" + (f" + {adapter}" if adapter else "") + ":")
    for line in format_eval_lines(0, metrics):
        console(line)
    if config.run.name:
        out = Path(config.run.runs_dir) / config.run.name / "eval.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": config.model.model, "adapter": adapter, **metrics}, indent=1))
        console(f"wrote {out}")
    return metrics
