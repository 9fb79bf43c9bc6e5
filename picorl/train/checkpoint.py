"""Atomic checkpoints: a killed run loses at most the updates since the last save, never a checkpoint.

``runs/NAME/adapter/`` is a plain PEFT adapter (or, for full fine-tuning, a transformers model
folder) that transformers/PEFT load directly. ``runs/NAME/checkpoint/`` adds what resuming needs:
optimizer and learning-rate schedule state, the update counter and the random-number generators' states.
Each folder is written beside its final place and swapped in with renames, so a crash mid-save
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

STATE_FILE = "trainer_state.pt"


def write_dir_atomically(final: Path, write) -> None:
    """Call ``write(tmp_dir)`` then swap ``tmp_dir`` into ``final``."""
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _existing(path: Path) -> Path | None:
    """The folder, or the previous copy a crash between the two renames left behind."""
    old = path.with_name(path.name + ".old")
    return path if path.exists() else old if old.exists() else None


def save_adapter(model, tokenizer, path: Path) -> None:
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    write_dir_atomically(path, write)


def save_checkpoint(run_dir: Path, model, tokenizer, update: int, optimizer, lr_scheduler) -> None:
    """Save the adapter/weights and the trainer state after ``update`` updates."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        state = {
            "update": update,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, tmp / STATE_FILE)

    write_dir_atomically(run_dir / "checkpoint", write)


def load_checkpoint(run_dir: Path, model, optimizer, lr_scheduler) -> int:
    """Restore a run's latest checkpoint into ``model``/``optimizer``/``lr_scheduler``; returns the
    number of updates it was saved after."""
    folder = _existing(run_dir / "checkpoint")
    if folder is None:
        raise ValueError(
            f"cannot resume: {run_dir} has no checkpoint/ (it was never saved; start without --resume)"
        )
    model_dir = folder / "model"
    if isinstance(model, PeftModel):
        set_peft_model_state_dict(model, load_file(model_dir / "adapter_model.safetensors"))
    else:
        state = {}
        for shard in sorted(model_dir.glob("*.safetensors")):
            state.update(load_file(shard))
        model.load_state_dict(state, strict=False)
    state = torch.load(folder / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["update"]
