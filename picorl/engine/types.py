"""The rollout interface every engine implements.

An engine turns prompt token ids into sampled completions: the exact token ids it sampled, the
fp32 log-probability of each under the sampling distribution, and why it stopped. The trainer
trains on those exact ids (never on re-tokenized text), so nothing is lost between the two.

Log-probabilities are those of ``log_softmax(logits / temperature)`` (temperature 1 when greedy),
taken before top-k / top-p truncation: the same quantity the trainer recomputes, so the two can be
compared token by token (``engine/logprob_diff_*``) and used for importance-sampling correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy decoding."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # besides the tokenizer's EOS
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks force a fixed length with this

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    token_ids: list[int]
    logprobs: list[float]  # one per token in token_ids
    finish_reason: FinishReason
    text: str = ""  # decoded token_ids, special tokens skipped (a stop string that ended it is kept)
    stop_reason: int | str | None = field(default=None)  # the stop token id / string, if any


class RolloutEngine(Protocol):
    """Anything that can sample completions for a batch of prompts.

    ``generate`` returns, for each prompt, ``n`` completions (a GRPO group is n samples of ONE
    prompt, so engines may prefill the prompt once and fork it). ``sleep`` frees whatever memory
    the engine holds between rollouts (its KV cache) so training can use it; ``wake_up`` restores it.
    ``last_stats`` describes the last ``generate`` call (``tokens_per_s`` at least, when it ran);
    ``kv_cache_bytes`` is the KV cache's size (0 for an engine without one).
    """

    last_stats: dict[str, float]

    @property
    def kv_cache_bytes(self) -> int: ...

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, n: int = 1
    ) -> list[list[Completion]]: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def fit_kv_cache(self, training_peak_bytes: int) -> int | None:
        """Size the KV cache once the first training step has shown its peak allocated memory, so the
        cache never leaves the next step short; returns the new size in bytes, or None when the
        engine keeps its size (no KV cache, not on a GPU, or a size fixed by its config)."""
        ...


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a turn: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif config_eos:
        ids.update(config_eos)
    return ids
