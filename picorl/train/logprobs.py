"""Per-token log-probabilities of chosen tokens, in fp32, without a full-vocabulary fp32 batch tensor.

The decoder runs once to hidden states; the output head and the log-softmax then run over chunks of
the chosen positions only, recomputed in backward, so the largest fp32 tensor is ``chunk x vocab``
rather than ``batch x length x vocab`` (defect 3 of the seed: one bf16 full-vocabulary log-softmax
over 64 rollouts peaked at 79 GB).
"""

from __future__ import annotations

import torch

from picorl.algos.losses import hidden_token_logprobs, token_logprobs
from picorl.models.loading import unwrap_hf_model

CHUNK_POSITIONS = 1024  # positions per head+log-softmax chunk: 1024 x 152k vocab x 4 B = 0.6 GB fp32


def chosen_token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    temperature: float = 1.0,
    return_hidden: bool = False,
):
    """Log-prob of ``input_ids[b, t]`` given the prefix, at the positions where ``positions[b, t]``.

    Returns a ``[B, T]`` fp32 tensor (zeros where ``positions`` is False). Token t is predicted from
    the hidden state at t - 1, so position 0 can never be chosen. ``temperature`` divides the logits,
    matching the distribution the engine sampled from. With ``return_hidden`` also returns the final
    hidden states (for a value head).
    """
    lm = unwrap_hf_model(model)
    hidden = lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    idx = positions[:, 1:].nonzero(as_tuple=True)  # (batch index, position - 1) of every chosen token
    states = hidden[:, :-1][idx]
    tokens = input_ids[:, 1:][idx]
    head = lm.lm_head
    if type(head) is torch.nn.Linear and head.bias is None:
        picked = hidden_token_logprobs(states, head.weight, tokens, temperature, CHUNK_POSITIONS)
    else:  # an adapted or biased head: plain autograd over chunks (keeps each chunk's logits for backward)
        picked = torch.cat(
            [
                token_logprobs(head(states[i : i + CHUNK_POSITIONS])[None], tokens[None, i : i + CHUNK_POSITIONS],
                               temperature)[0]
                for i in range(0, states.shape[0], CHUNK_POSITIONS)
            ]
        ) if states.shape[0] else states.new_zeros(0, dtype=torch.float32)  # fmt: skip
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    out = out.index_put((idx[0], idx[1] + 1), picked)
    return (out, hidden) if return_hidden else out
