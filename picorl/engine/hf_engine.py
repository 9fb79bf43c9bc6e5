"""The simple reference engine: transformers ``generate``, one GRPO group at a time.

Correct and short, not fast: it is the baseline the paged engine (:mod:`picorl.engine`) is measured
and tested against, and a fallback for architectures the paged engine does not support.
"""

from __future__ import annotations

import torch

from picorl.engine.types import Completion, SamplingParams, eos_token_ids


class HFEngine:
    """RolloutEngine over ``model.generate``; it holds no memory between calls, so sleep is a no-op."""

    def __init__(self, model, tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.last_stats: dict[str, float] = {}

    @property
    def kv_cache_bytes(self) -> int:
        return 0

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def fit_kv_cache(self, training_peak_bytes: int) -> int | None:
        return None

    @torch.inference_mode()
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, n: int = 1
    ) -> list[list[Completion]]:
        was_training = self.model.training
        self.model.eval()
        if params.seed is not None:
            torch.manual_seed(params.seed)
        try:
            return [self._generate_group(prompt, params, n) for prompt in prompts]
        finally:
            self.model.train(was_training)

    def _generate_group(self, prompt: list[int], params: SamplingParams, n: int) -> list[Completion]:
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([prompt] * n, device=device)
        eos_ids = eos_token_ids(self.model, self.tokenizer)
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else eos_ids)
        sampling = (
            {"do_sample": False}
            if params.greedy
            else {
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": params.top_k,
            }
        )
        out = self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=params.max_tokens,
            min_new_tokens=params.max_tokens if params.ignore_eos else 0,
            eos_token_id=sorted(stop_ids) or None,
            pad_token_id=self.tokenizer.pad_token_id,
            stop_strings=list(params.stop_strings) or None,
            tokenizer=self.tokenizer if params.stop_strings else None,
            output_logits=True,
            return_dict_in_generate=True,
            **sampling,
        )
        new_tokens = out.sequences[:, len(prompt) :]
        temperature = 1.0 if params.greedy else params.temperature
        logits = torch.stack(out.logits, dim=1).float() / temperature  # [n, steps, vocab]
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new_tokens[..., None])[..., 0]
        return [
            self._completion(row.tolist(), lp.tolist(), stop_ids, params)
            for row, lp in zip(new_tokens, logprobs)
        ]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _completion(
        self, ids: list[int], logprobs: list[float], stop_ids: set[int], params: SamplingParams
    ) -> Completion:
        for i, token in enumerate(ids):
            if token in stop_ids:
                ids, logprobs = ids[: i + 1], logprobs[: i + 1]
                return Completion(ids, logprobs, "stop", self._decode(ids), stop_reason=token)
        text = self._decode(ids)
        for stop in params.stop_strings:
            if text.endswith(stop):
                return Completion(ids, logprobs, "stop", text, stop_reason=stop)
        return Completion(ids, logprobs, "length", text)
