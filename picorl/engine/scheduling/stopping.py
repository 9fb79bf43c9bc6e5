"""When a sequence is done: a stop token (EOS unless ignored, or a requested id), a stop string in
its decoded text, or ``max_tokens``. Stop tokens and strings finish with "stop", the cap with "length"."""

from __future__ import annotations

from picorl.engine.scheduling.sequence import Sequence
from picorl.engine.types import SamplingParams

# Bytes per character at most in UTF-8: a stop string of L characters spans at most 4 L byte-level
# tokens; the tail decoded for the check is that long plus a margin for decoders that merge tokens.
MAX_TOKENS_PER_CHAR = 4
TAIL_MARGIN = 8


class StopChecker:
    def __init__(self, params: SamplingParams, eos_ids: set[int], tokenizer) -> None:
        if params.stop_strings and tokenizer is None:
            raise ValueError("stop_strings need the engine to have a tokenizer: pass one to LLMEngine")
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else eos_ids)
        self.stop_strings = params.stop_strings
        self.max_tokens = params.max_tokens
        self.tokenizer = tokenizer
        longest = max((len(s) for s in self.stop_strings), default=0)
        self.tail = MAX_TOKENS_PER_CHAR * longest + TAIL_MARGIN

    def __call__(self, seq: Sequence) -> tuple[str, int | str | None] | None:
        """(finish_reason, stop_reason) once ``seq``'s newest token ends it, else None.

        Stop strings are looked for in the decoded tail of the completion after every token, so the
        first token that completes one ends the sequence (and is kept).
        """
        token = seq.token_ids[-1]
        if token in self.stop_ids:
            return "stop", token
        if self.stop_strings:
            text = self.decode(seq.completion_ids[-self.tail :])
            for stop in self.stop_strings:
                if stop in text:
                    return "stop", stop
        if seq.num_completion_tokens >= self.max_tokens:
            return "length", None
        return None

    def decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=True)
