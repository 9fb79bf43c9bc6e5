"""What a run sets up before it trains or evaluates: the device, the seeds, the task-seed ranges and
the rollout engine. ``train/`` and ``eval/`` both build on this module, so neither imports the other
for it.

Task seeds live in three disjoint ranges, so no eval or SFT task is ever a training task:

- training tasks: ``[0, EVAL_SEEDS_START)`` (a fixed function of run seed, update and group);
- eval sets: from ``EVAL_SEEDS_START`` (a fixed function of eval seed, tier and index);
- SFT demonstrations: from ``SFT_SEEDS_START`` (``picorl.train.sft``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial

import torch

from picorl.config import Config
from picorl.engine import EngineConfig, HFEngine, LLMEngine, RolloutEngine
from picorl.envs.base import Env
from picorl.envs.registry import make_env

EVAL_SEEDS_START = 2**40  # training task seeds are below it
SFT_SEEDS_START = 2**41
LONGEST_PROMPT_TOKENS = 1024  # prompts of the hardest letter-counting tier are ~600 tokens


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA when visible, else CPU) or a device name; a clear error for a missing GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but no CUDA GPU is visible; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def train_task_seeds(seed: int, update: int, start: int, count: int) -> list[int]:
    """Training task seeds of groups ``start .. start + count``: a fixed function of (run seed, update,
    group), below ``EVAL_SEEDS_START``."""
    return [(seed * 1_000_003 + update * 10_007 + g) % EVAL_SEEDS_START for g in range(start, start + count)]


def eval_task_seeds(tier: int, num_tasks: int, eval_seed: int) -> list[int]:
    """The fixed seeds of a tier's eval set (disjoint from training seeds)."""
    return [EVAL_SEEDS_START + eval_seed * 1_000_003 + tier * 100_000 + i for i in range(num_tasks)]


def env_factory(
    config: Config, tiers: list[int] | None = None, tokenizer=None, stitch_fraction: float = 0.0
) -> Callable[[], Env]:
    """Fresh environments as ``config.env`` says, on ``tiers`` (default: the training tiers).
    ``tokenizer``: the model's, for demonstrations in the ``pieces`` reasoning format and for
    ``stitch_fraction`` (the share of random strings stitched from its long tokens: training data)."""
    env = config.env
    extra: dict[str, object] = {}
    if tokenizer is not None and env.cot == "pieces":
        extra["text_pieces"] = token_pieces(tokenizer)
    if stitch_fraction:
        if tokenizer is None:
            raise ValueError("stitched strings are built from the model's tokens: pass its tokenizer")
        extra["stitch_pieces"] = long_alphabetic_tokens(tokenizer)
        extra["stitch_fraction"] = stitch_fraction
    return partial(make_env, env.env, difficulty=tiers or env.train_difficulty, **env.kwargs(), **extra)


def train_env_factory(config: Config, tiers: list[int] | None = None, tokenizer=None) -> Callable[[], Env]:
    """RL's training environments: :func:`env_factory` with ``env.train_stitch_fraction`` of the
    random strings stitched from ``tokenizer``'s long tokens (the eval uses plain ``env_factory``)."""
    return env_factory(config, tiers, tokenizer, config.env.train_stitch_fraction)


def long_alphabetic_tokens(tokenizer, min_letters: int = 4) -> list[str]:
    """The tokens of ``tokenizer`` that are ``min_letters`` or more lowercase a-z letters and nothing
    else (no space marker: the pieces a string is cut into after its first token), sorted. SmolLM2's
    vocabulary has 9,377; they are the pieces it misspells (2- and 3-letter ones it spells right)."""
    vocab = tokenizer.get_vocab()
    return sorted(t for t in vocab if len(t) >= min_letters and t.isascii() and t.isalpha() and t.islower())


def token_pieces(tokenizer) -> Callable[[str], list[str]]:
    """How ``tokenizer`` cuts a word-like string that follows a space (as the task's string does in
    its prompt): the text of each token, the first one's space removed. Read from the fast tokenizer's
    character offsets (one call; decoding token by token took 3.5x as long), else decoded token by
    token; falls back to single characters where tokens do not spell the string (byte pieces of
    non-ASCII text)."""

    def tiling(cut: list[str], text: str) -> list[str] | None:
        cut[0] = cut[0].lstrip(" ")
        cut = [p for p in cut if p]
        return cut if "".join(cut) == text else None

    def pieces(text: str) -> list[str]:
        spaced = " " + text
        if tokenizer.is_fast:
            spans = tokenizer(spaced, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            cut = tiling([spaced[a:b] for a, b in spans], text)
            if cut is not None:
                return cut
        ids = tokenizer(spaced, add_special_tokens=False)["input_ids"]
        return tiling([tokenizer.decode([i]) for i in ids], text) or list(text)

    return pieces


def make_engine(config: Config, model, tokenizer, device: torch.device) -> RolloutEngine:
    """The built-in paged engine (default) or the transformers reference engine (``--engine hf``).

    The paged engine runs the policy's own modules, so it needs no weight sync, ever: an optimizer
    step is visible in the next rollout.
    """
    if config.rollout.engine == "hf":
        return HFEngine(model, tokenizer)
    rollout = config.rollout
    engine_config = EngineConfig(
        kv_cache_gib=rollout.kv_cache_gib,
        kv_cache_fraction=rollout.kv_cache_fraction if device.type == "cuda" else None,
        max_model_len=max_sequence_length(config),
        adapter_dtype=rollout.engine_adapter_dtype,
    )
    return LLMEngine(model, tokenizer, engine_config)


def max_sequence_length(config: Config) -> int:
    """Longest prompt + completion a run can produce: every turn of the environment may add a completion."""
    longest_completion = max(config.rollout.max_tokens, config.eval.eval_max_tokens or 0)
    return LONGEST_PROMPT_TOKENS + longest_completion * make_env(config.env.env).max_turns
