"""Atomic checkpoints: a killed run loses at most the work since the last save, never a checkpoint.

``runs/NAME/adapter/`` is a plain PEFT adapter (or, for full fine-tuning, a transformers model
folder) that transformers/PEFT load directly; its ``adapter_config.json`` names the base model and
``base_model.json`` fingerprints it (:mod:`picorl.models.identity`). ``runs/NAME/checkpoint/`` adds
what resuming needs (``trainer_state.pt``): the phase and step reached, optimizer and learning-rate
schedule state, PPO's value head, the random-number generators, the base model's record, and the byte length
of each log file at that moment, so a resume cuts the logs back to exactly the checkpoint's rows.

Each folder is written beside its final place (``NAME.tmp``) and swapped in with two renames
(``NAME`` -> ``NAME.old``, ``NAME.tmp`` -> ``NAME``), so a kill at any moment leaves either
``NAME`` or ``NAME.old`` complete; :func:`latest_checkpoint` reads whichever is newest and valid.
A failed write (disk full, read-only) raises :class:`SaveError` and leaves the previous one intact.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from picorl.models.adapter import BASE_FILE
from picorl.models.adapter import CONFIG_FILE as ADAPTER_CONFIG

STATE_FILE = "trainer_state.pt"
REQUIRED_STATE = ("update", "optimizer", "lr_scheduler", "rng", "log_sizes")
MODEL_DIR = "model"


class OlderCheckpoint(Exception):
    """A checkpoint from before the state held what an exact resume needs."""


class SaveError(ValueError):
    """A checkpoint or adapter could not be written; the previous one is intact."""


def write_dir_atomically(final: Path, write) -> None:
    """Call ``write(tmp_dir)`` then swap ``tmp_dir`` into ``final``; an OSError is a :class:`SaveError`."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write(tmp)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = final if final.exists() else old if old.exists() else None
        kept = f"the previous copy in {previous} is intact" if previous else "there was no previous copy"
        raise SaveError(
            f"could not write {final}: {e.strerror or e} ({type(e).__name__}); {kept}. Free some space or "
            "make the folder writable, then continue with --resume"
        ) from None
    shutil.rmtree(old, ignore_errors=True)


def save_adapter(model, tokenizer, path: Path, base: dict[str, Any] | None = None) -> None:
    """The trained adapter (or full model) as PEFT/transformers write it, naming its base model
    (``base``: :func:`picorl.models.identity.base_model_record`; without it the base goes unrecorded)."""

    def write(tmp: Path) -> None:
        _save_model(model, tokenizer, tmp, base)

    write_dir_atomically(path, write)


def _save_model(model, tokenizer, folder: Path, base: dict[str, Any] | None) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if base is None:
        return
    config_path = folder / ADAPTER_CONFIG
    if config_path.is_file():  # written after the save: PEFT would look the name up on the hub while saving
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = base["name"]  # PEFT leaves null for gguf and tiny models
        config_path.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    (folder / BASE_FILE).write_text(json.dumps(base) + "\n")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model, tokenizer, base: dict[str, Any], state: dict[str, Any]) -> None:
    """Save the model/adapter and ``state`` (plus the RNG states) as ``run_dir/checkpoint``."""

    def write(tmp: Path) -> None:
        _save_model(model, tokenizer, tmp / MODEL_DIR, base)
        torch.save({**state, "rng": rng_state(), "base_model": base}, tmp / STATE_FILE)

    write_dir_atomically(Path(run_dir) / "checkpoint", write)


@dataclass
class Checkpoint:
    """A checkpoint read back whole (so a damaged one is found before anything is changed)."""

    folder: Path
    state: dict[str, Any]
    weights: dict[str, torch.Tensor]


def latest_checkpoint(run_dir: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest readable checkpoint of ``run_dir`` (``checkpoint/``, else ``checkpoint.old``, which a
    kill between the two renames of a save leaves behind), and why any others were passed over."""
    problems: list[str] = []
    for folder in (Path(run_dir) / "checkpoint", Path(run_dir) / "checkpoint.old"):
        if not folder.is_dir():
            continue
        try:
            return _read(folder), problems
        except OlderCheckpoint as e:  # readable, but resuming it would lose or repeat rows: say so
            raise ValueError(
                f"{folder} was written by an older picorl ({e}), so it cannot be resumed exactly; "
                "start a new run (another --name), or continue it with the picorl version that wrote it"
            ) from None
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped for an older one
            problems.append(f"{folder} is unreadable ({type(e).__name__}: {str(e)[:120]})")
    return None, problems


def _read(folder: Path) -> Checkpoint:
    from safetensors.torch import load_file

    state = torch.load(folder / STATE_FILE, weights_only=False, map_location="cpu")
    missing = [key for key in REQUIRED_STATE if key not in state]
    if missing:
        raise OlderCheckpoint(f"its state has no {', '.join(missing)}")
    shards = sorted((folder / MODEL_DIR).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no weights in {folder / MODEL_DIR}")
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        weights.update(load_file(shard))
    return Checkpoint(folder, state, weights)


def restore_weights(checkpoint: Checkpoint, model) -> None:
    """Load the checkpoint's adapter (or full weights) into ``model``."""
    from peft import PeftModel, set_peft_model_state_dict

    if isinstance(model, PeftModel):
        result = set_peft_model_state_dict(model, checkpoint.weights)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{checkpoint.folder} holds weights this adapter lacks: {unexpected[:3]}")
    else:
        model.load_state_dict(checkpoint.weights, strict=False)


def restore_optimizer(
    checkpoint: Checkpoint, optimizer, lr_scheduler, base_lrs: list[float], weight_decays: list[float]
) -> None:
    """Optimizer and learning-rate schedule state, then the run's CURRENT learning rates and weight decays (loading
    a state dict brings back the saved ones, which would silently undo a changed ``--lr``)."""
    optimizer.load_state_dict(checkpoint.state["optimizer"])
    lr_scheduler.load_state_dict(checkpoint.state["lr_scheduler"])
    lr_scheduler.base_lrs = list(base_lrs)
    for group, base, decay, factor in zip(
        optimizer.param_groups, base_lrs, weight_decays, lr_scheduler.lr_lambdas, strict=True
    ):
        group["initial_lr"] = base
        group["lr"] = base * factor(lr_scheduler.last_epoch)
        group["weight_decay"] = decay
