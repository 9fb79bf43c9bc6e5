"""Loading a saved LoRA adapter onto its base model, with errors that name the file and the fix.

Every way an adapter folder can be wrong (missing, cut short by a kill or a full disk, hand-edited,
trained on another base) is checked here before PEFT sees it: PEFT's own messages for these cases
are tracebacks about hub repo ids or 40 lines of size mismatches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from picorl.models.identity import base_model_record, describe, same_base

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
BASE_FILE = "base_model.json"  # picorl's record of the base (picorl.models.identity)


class AdapterError(ValueError):
    """An adapter folder that cannot be used as asked (the message says which file and what to do)."""


def read_adapter_files(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """Check ``folder`` and read it: (adapter_config.json, the weights, base_model.json or None)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    run_hint = "pass a folder written by picorl train (runs/NAME/adapter or runs/NAME/checkpoint/model)"
    if not folder.is_dir():
        raise AdapterError(f"adapter folder {folder} does not exist; {run_hint}")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file() and (folder / "config.json").is_file():
        raise AdapterError(
            f"{folder} holds a whole model (a full fine-tune), not an adapter: pass it as --model"
        )
    if not config_path.is_file():
        raise AdapterError(f"{folder} is not a PEFT adapter folder (no {CONFIG_FILE}); {run_hint}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(
            f"{config_path} is not valid JSON ({e}); restore it from runs/NAME/checkpoint/model/{CONFIG_FILE}"
        ) from None
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path} must hold a JSON object, got {type(config).__name__}")
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise AdapterError(
            f"{folder} has no {WEIGHTS_FILE} (a save cut short?); use the copy in runs/NAME/checkpoint/model, "
            "or re-run the save"
        )
    try:
        weights = load_file(weights_path)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise AdapterError(
            f"{weights_path} is damaged and cannot be read ({type(e).__name__}: {e}); use the copy in "
            "runs/NAME/checkpoint/model, or re-train"
        ) from None
    base = None
    if (folder / BASE_FILE).is_file():
        try:
            base = json.loads((folder / BASE_FILE).read_text())
        except json.JSONDecodeError as e:
            raise AdapterError(
                f"{folder / BASE_FILE} is not valid JSON ({e}); delete it to skip the check"
            ) from None
    return config, weights, base


def check_adapter_base(
    folder: str | Path, config: dict[str, Any], base: dict[str, Any] | None, model, model_name: str
) -> None:
    """Refuse an adapter trained on another base than ``model`` (loaded as ``model_name``)."""
    if base is not None:
        if not same_base(base, base_model_record(model, model_name)):
            raise AdapterError(
                f"the adapter in {folder} was trained on {describe(base)}, not on {model_name!r}: "
                f"pass --model {base.get('name')}"
            )
        return
    recorded = config.get("base_model_name_or_path")
    if recorded and recorded != model_name:
        raise AdapterError(
            f"the adapter in {folder} was trained on {recorded!r} ({CONFIG_FILE}), not on {model_name!r}: "
            f"pass --model {recorded}"
        )


def load_adapter(model, folder: str | Path, model_name: str):
    """``model`` (a base model) wrapped with the adapter saved in ``folder``, after checking it fits."""
    from peft import PeftModel

    config, _, base = read_adapter_files(folder)
    check_adapter_base(folder, config, base, model, model_name)
    try:
        return PeftModel.from_pretrained(model, str(folder))
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AdapterError(
            f"the adapter in {folder} does not fit {model_name!r} ({first[:200]}); it was made for "
            f"{config.get('base_model_name_or_path') or 'another base model'}: pass the --model it was trained on"
        ) from None
