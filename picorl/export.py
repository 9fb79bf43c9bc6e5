"""``picorl export runs/NAME --merged OUT``: the trained policy as a plain Hugging Face model folder.

The LoRA adapter is merged into the base weights in fp32 (merging in bf16 rounds ``W + BA`` twice),
then cast to the export dtype. The folder holds safetensors weights, ``config.json``, the tokenizer
with its chat template, and a ``generation_config.json`` whose EOS ids include the chat template's
end-of-turn token, so ``AutoModelForCausalLM.from_pretrained(OUT)`` (or vLLM) loads and stops right
without PEFT.
"""

from __future__ import annotations

from pathlib import Path

import torch

from picorl.config import build_config, load_toml
from picorl.engine.types import eos_token_ids
from picorl.models import load_model_and_tokenizer
from picorl.models.adapter import load_adapter
from picorl.models.loading import resolve_dtype

_MARKER = "PICORL_END_OF_TURN_PROBE"


def chat_stop_token_ids(tokenizer) -> list[int]:
    """The special tokens the chat template writes right after an assistant message (e.g.
    ``<|im_end|>``): what a generation must stop on, whether or not it is the tokenizer's EOS."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARKER}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if _MARKER not in text:
        return []
    after = text[text.rindex(_MARKER) + len(_MARKER) :]
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    special |= set(tokenizer.all_special_ids)
    for token_id in tokenizer(after, add_special_tokens=False)["input_ids"]:
        if token_id in special:
            return [token_id]
    return []


def _run_config(run_dir: Path):
    path = run_dir / "config.toml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a picorl run folder (no config.toml); pass runs/NAME")
    return build_config(load_toml(path))


def load_merged_policy(run_dir: Path, adapter: Path | None = None):
    """The run's base model with its adapter (default ``run_dir/adapter``) merged, in fp32 on the CPU;
    returns (model, tokenizer). A full fine-tune's ``adapter/`` is already a whole model."""
    config = _run_config(run_dir)
    adapter = Path(adapter) if adapter is not None else run_dir / "adapter"
    if (adapter / "adapter_config.json").is_file():
        base, tokenizer = load_model_and_tokenizer(config.model.model, dtype="fp32")
        model = load_adapter(base, adapter, config.model.model).merge_and_unload()  # checked: files and base
    elif (adapter / "config.json").is_file():
        model, tokenizer = load_model_and_tokenizer(str(adapter), dtype="fp32")
    else:
        raise FileNotFoundError(
            f"{adapter} holds no adapter (adapter_config.json) or model (config.json): "
            "was the run saved? (runs save at the end and every --save-every updates)"
        )
    return model, tokenizer


def export_merged(run_dir: str | Path, out: str | Path, dtype: str | None = None, adapter=None) -> Path:
    """Write the merged model of ``run_dir`` to ``out`` in ``dtype`` (default: the run's dtype, bf16
    when that was auto); returns ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; pick a new folder for the export")
    config = _run_config(run_dir)
    dtype = dtype or (config.model.dtype if config.model.dtype != "auto" else "bf16")
    torch_dtype = resolve_dtype(dtype, torch.device("cpu"))
    model, tokenizer = load_merged_policy(run_dir, adapter)
    model = model.to(torch_dtype)
    model.config.use_cache = True  # training turned the KV cache off; generation wants it
    stops = sorted(eos_token_ids(model, tokenizer) | set(chat_stop_token_ids(tokenizer)))
    generation = model.generation_config
    generation.eos_token_id = stops[0] if len(stops) == 1 else stops
    generation.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
