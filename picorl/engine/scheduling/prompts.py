"""Checks on a generate call's prompts, before anything runs: a clear error instead of a failure mid-batch."""

from __future__ import annotations

from picorl.engine.types import SamplingParams


def check_prompts(
    prompts: list[list[int]],
    params: SamplingParams,
    vocab_size: int,
    num_blocks: int,
    block_size: int,
    max_model_len: int | None,
) -> None:
    """Every prompt is non-empty, in the vocabulary, and fits ``max_model_len`` and the KV cache
    together with ``params.max_tokens``."""
    capacity = num_blocks * block_size
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        if min(prompt) < 0 or max(prompt) >= vocab_size:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size}) of the model's vocabulary")
        total = len(prompt) + params.max_tokens
        if max_model_len is not None and total > max_model_len:
            raise ValueError(
                f"prompt {i} ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds max_model_len={max_model_len}"
            )
        if total - 1 > capacity:  # the last sampled token is never written to the cache
            raise ValueError(
                f"prompt {i} ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) does not fit the KV cache "
                f"({num_blocks} blocks x {block_size} tokens); raise kv_cache_gib or num_blocks"
            )
