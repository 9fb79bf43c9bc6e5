"""One sequence the engine generates: its tokens, its KV-cache blocks, and its sampled log-probs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, auto

from picorl.engine.types import FinishReason


class Status(Enum):
    WAITING = auto()  # needs a prefill (new, or preempted and to be recomputed)
    RUNNING = auto()  # its KV cache holds every token but the last, which the next decode step feeds
    FINISHED = auto()


@dataclass(eq=False)
class Sequence:
    """Prompt plus generated tokens of one sample.

    A new sequence waits with ``sample_indices`` = the indices it will become: its prompt is
    prefilled once and then forked into one running sequence per index (a GRPO group). A preempted
    sequence waits with its single index and is recomputed, prompt and generated tokens together.
    """

    token_ids: list[int]
    num_prompt_tokens: int
    prompt_index: int
    sample_indices: list[int]  # which of the prompt's n samples this sequence is, or will fork into
    block_table: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: FinishReason = "length"  # set when it finishes
    stop_reason: int | str | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def sample_index(self) -> int:
        assert len(self.sample_indices) == 1, "only a forked (running) sequence has a single sample index"
        return self.sample_indices[0]

    @property
    def completion_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def split_samples(self, count: int) -> Sequence:
        """Keep the first ``count`` sample indices here; return a waiting copy that holds the rest."""
        rest = Sequence(list(self.token_ids), self.num_prompt_tokens, self.prompt_index, self.sample_indices[count:])
        self.sample_indices = self.sample_indices[:count]
        return rest

    def fork(self, sample: int, block_table: list[int]) -> Sequence:
        """A sibling with the same tokens so far, its own sample index and the given blocks."""
        return Sequence(
            list(self.token_ids),
            self.num_prompt_tokens,
            self.prompt_index,
            [sample],
            block_table=block_table,
            logprobs=list(self.logprobs),
            status=self.status,
        )
