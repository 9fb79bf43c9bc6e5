"""Starting or resuming a run: every check before the first write, then where the run continues from.

``picorl train --name NAME --resume`` starts from the run's saved ``config.toml``; flags and a
``--config`` file given with it override those values. Before anything is written:

- ``--resume`` of a run that does not exist, and a new run over an existing one, are errors;
- settings that change what the checkpoint's weights mean (the base model, dtype, LoRA shape or
  scaling, full fine-tuning, the algorithm, whose optimizer state and value head are part of the
  checkpoint, and the environment) are refused, each one named; so is a base model whose weights
  differ from the checkpoint's (:mod:`picorl.models.identity`);
- every other change (number of updates, eval cadence, learning rate, batch sizes...) is allowed,
  printed, and recorded in ``resumes.jsonl`` and the new ``config.toml``.

The run then continues from its newest readable checkpoint with ``metrics.jsonl``, ``samples.jsonl``
and ``eval_samples.jsonl`` cut back to their length at that checkpoint, so the logs hold each row
once and none is missing. With no checkpoint yet (killed during set-up or the first SFT steps) it
starts over with empty logs, which, the run being seeded, gives what an uninterrupted run gives.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picorl.config import Config, build_config, dump_toml, load_toml, to_dict
from picorl.logging.metrics import truncate_logs
from picorl.models.identity import describe, same_base
from picorl.train.checkpoint import Checkpoint, latest_checkpoint

CONFIG_FILE = "config.toml"
RESUMES_FILE = "resumes.jsonl"

# field -> why it cannot change on resume
REFUSED_ON_RESUME = {
    "model": "the checkpoint's weights belong to the base model they were trained on",
    "dtype": "the weights and optimizer state were kept in the saved dtype",
    "full_finetune": "a full checkpoint and a LoRA adapter are different things",
    "lora_rank": "it changes the adapter's shapes",
    "lora_alpha": "it rescales every adapter update already learned",
    "lora_target_modules": "it changes which layers have adapter weights",
    "algo": "the optimizer state (and PPO's value head) belong to the saved algorithm",
    "env": "the checkpoint was trained on another task",
}
NOT_COMPARED = ("resume",)  # how this invocation was asked, not a setting of the run


def resume_overrides(overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The saved run's configuration with ``overrides`` (flags and ``--config``) on top."""
    run = build_config(overrides).run
    if not run.name:
        raise ValueError("--resume needs the run's name: picorl train --name NAME --resume")
    saved = Path(run.runs_dir) / run.name / CONFIG_FILE
    if not saved.is_file():
        raise ValueError(
            f"there is no run to resume in {saved.parent} (no {CONFIG_FILE}); check --name and --runs-dir, "
            "or start it without --resume"
        )
    merged = load_toml(saved)
    refuse_changes(
        {
            f"{section}.{key}": (merged.get(section, {}).get(key), value)
            for section, values in overrides.items()
            for key, value in values.items()
            if merged.get(section, {}).get(key) != value
        },
        saved.parent,
    )  # before merging: a refused change can also clash with the saved autos (algo vs scale_rewards)
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return merged


@dataclass
class RunPlan:
    """What a run will do, decided before anything is written."""

    run_dir: Path
    config: Config
    checkpoint: Checkpoint | None = None  # what a resume continues from (None: from the start)
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # settings changed on resume
    notes: list[str] = field(default_factory=list)  # for the console
    saved: str | None = None  # the last checkpoint this process wrote ("update 3", "SFT step 2")

    @property
    def step(self) -> int:
        return self.checkpoint.state["update"] if self.checkpoint else 0


def plan_run(config: Config) -> RunPlan:
    """Check the run directory and, on resume, the settings and the checkpoint; writes nothing."""
    name = config.run.name or time.strftime("run-%Y%m%d-%H%M%S")
    run_dir = Path(config.run.runs_dir) / name
    started = (run_dir / CONFIG_FILE).exists() or (run_dir / "metrics.jsonl").exists()
    if not config.run.resume:
        if started:
            raise ValueError(
                f"{run_dir} already holds a run: pass --resume to continue it, or choose another --name"
            )
        return RunPlan(run_dir, config)
    if not config.run.name or not (run_dir / CONFIG_FILE).is_file():
        raise ValueError(
            f"there is no run to resume in {run_dir} (no {CONFIG_FILE}); check --name and --runs-dir, "
            "or start it without --resume"
        )
    plan = RunPlan(run_dir, config, changes=check_resume_settings(saved_config(run_dir), config, run_dir))
    plan.checkpoint, problems = latest_checkpoint(run_dir)
    plan.notes += [f"skipped {p}" for p in problems]
    if plan.checkpoint is None:
        plan.notes.append("no checkpoint was written yet: starting the run over from the beginning")
    elif plan.step > config.train.num_updates:
        raise ValueError(
            f"{run_dir}'s checkpoint is at update {plan.step}, beyond --num-updates {config.train.num_updates}; "
            f"pass --num-updates {plan.step} or more"
        )
    else:
        state = plan.checkpoint.state
        if state.get("phase") != "sft" and config.algo.kl_to_start and "reference_weights" not in state:
            raise ValueError(
                f"{plan.checkpoint.folder} holds no KL reference (its RL phase began with beta = 0 or "
                "kl_reference = base), so the policy RL started from is not kept: resume with --beta 0 or "
                "--kl-reference base, or start a new run from its adapter (--init-adapter)"
            )
        where = f"SFT step {state['sft_step']}" if state.get("phase") == "sft" else f"update {plan.step}"
        plan.notes.append(f"resuming from {plan.checkpoint.folder.name}/ at {where}")
    for key, (old, new) in plan.changes.items():
        plan.notes.append(f"changed on resume: {key} {old!r} -> {new!r}")
    return plan


def check_resume_settings(saved: Config, new: Config, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """The settings that differ (``section.key -> (saved, new)``); refused ones raise, all named."""
    changes: dict[str, tuple[Any, Any]] = {}
    old_values = to_dict(saved)
    for section, values in to_dict(new).items():
        for key, value in values.items():
            if key not in NOT_COMPARED and old_values[section].get(key) != value:
                changes[f"{section}.{key}"] = (old_values[section].get(key), value)
    refuse_changes(changes, run_dir)
    return changes


def refuse_changes(changes: dict[str, tuple[Any, Any]], run_dir: Path) -> None:
    """Raise, naming every one, if ``changes`` touches a setting in :data:`REFUSED_ON_RESUME`."""
    refused = [
        f"  {name}: saved {old!r}, now {new!r} ({REFUSED_ON_RESUME[name.split('.')[1]]})"
        for name, (old, new) in changes.items()
        if name.split(".")[1] in REFUSED_ON_RESUME
    ]
    if refused:
        raise ValueError(
            f"cannot resume {run_dir} with these settings changed:\n" + "\n".join(refused) + "\n"
            "Drop those flags to continue the run as it was, or start a new run under another --name."
        )


def saved_config(run_dir: Path) -> Config:
    return build_config(load_toml(run_dir / CONFIG_FILE))


def check_base(plan: RunPlan, base: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint on a base model whose weights differ from its own."""
    saved = plan.checkpoint.state.get("base_model") if plan.checkpoint else None
    if saved is not None and not same_base(saved, base):
        raise ValueError(
            f"{plan.checkpoint.folder} was trained on {describe(saved)}, but {describe(base)} loads different "
            "weights (the model files changed?); restore that model, or start a new run"
        )


def open_run(plan: RunPlan) -> None:
    """The first writes: the run folder, ``config.toml``, a resume's record, the logs cut back."""
    try:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        (plan.run_dir / CONFIG_FILE).write_text(dump_toml(plan.config))
    except OSError as e:
        raise ValueError(
            f"cannot write the run folder {plan.run_dir}: {e.strerror or e}; pass --runs-dir with a writable folder"
        ) from None
    if plan.config.run.resume:
        truncate_logs(plan.run_dir, plan.checkpoint.state["log_sizes"] if plan.checkpoint else {})
        row = {
            "time": time.time(),
            "from_update": plan.step if plan.checkpoint else None,
            "changes": {k: list(v) for k, v in plan.changes.items()},
        }
        with (plan.run_dir / RESUMES_FILE).open("a") as f:
            f.write(json.dumps(row) + "\n")
