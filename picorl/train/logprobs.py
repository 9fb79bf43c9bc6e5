"""Per-token log-probabilities of chosen tokens, in fp32, without a full-vocabulary fp32 batch tensor.

The decoder runs once to hidden states; the output head and the log-softmax then run over chunks of
the chosen positions only, recomputed in backward, so the largest fp32 tensor is ``chunk x vocab``
rather than ``batch x length x vocab`` (the seed's one bf16 full-vocabulary log-softmax over 64
rollouts peaked at 79 GB). The two autograd functions at the end do the chunking: they keep nothing
vocabulary-sized for the backward pass either.
"""

from __future__ import annotations

import contextlib

import torch

from picorl.models.loading import unwrap_hf_model

CHUNK_POSITIONS = 1024  # positions per head+log-softmax chunk: 1024 x 152k vocab x 4 B = 0.6 GB fp32


def chosen_token_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    token_mask: torch.Tensor,
    temperature: float = 1.0,
    return_hidden: bool = False,
    autocast=None,
):
    """Log-prob of ``input_ids[b, t]`` given the prefix, wherever the boolean ``token_mask[b, t]``.

    Returns a ``[B, T]`` fp32 tensor (zeros where ``token_mask`` is False). Token t is predicted from
    the hidden state at t - 1, so position 0 can never be chosen. ``temperature`` divides the logits,
    matching the distribution the engine sampled from. With ``return_hidden`` also returns the final
    hidden states (for a value head). ``autocast`` is a context the decoder alone runs in (the head and the
    log-softmax keep their dtypes: bf16 logits would round log-probs by ~0.01-0.1).

    ``attention_mask=None`` is for rows padded on the right (or not at all), as every batch the trainer
    builds is: causal attention alone is then exact at every real token, since a row's padding comes
    after all of its real tokens and none of them attends to it. It is also faster: with a padding mask
    transformers copies the grouped K/V heads out to every query head and SDPA falls back to a masked
    kernel, where without one SDPA runs a fused causal kernel (cuDNN's or flash) on the grouped heads.
    Pass the mask for left padding.
    """
    lm = unwrap_hf_model(model)
    with autocast if autocast is not None else contextlib.nullcontext():
        hidden = lm.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    idx = token_mask[:, 1:].nonzero(as_tuple=True)  # (batch index, position - 1) of every chosen token
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


def _chosen_logprobs_chunk(logits: torch.Tensor, tokens: torch.Tensor, temperature: float):
    """fp32 ``(log p(token), logsumexp)`` for a ``[n, V]`` chunk of logits."""
    scaled = logits.float() / temperature
    lse = torch.logsumexp(scaled, dim=-1)
    return scaled.gather(-1, tokens[:, None])[:, 0] - lse, lse


def _dlogits(scaled, lse, tokens, grad_out, temperature):
    """d log p(token) / d logits for a chunk, times ``grad_out``: ``(onehot - softmax) / T``."""
    g = -(scaled - lse[:, None]).exp() * grad_out[:, None]
    g.scatter_add_(-1, tokens[:, None], grad_out[:, None])
    return g / temperature


class _HiddenTokenLogprobs(torch.autograd.Function):
    """Head matmul + log-softmax + gather, chunk by chunk; backward recomputes each chunk's logits
    from the saved hidden states instead of keeping ``n x V`` fp32 logits alive for backward."""

    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, chunk_size):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for s in range(0, hidden.shape[0], chunk_size):
            logits = hidden[s : s + chunk_size] @ weight.t()
            out[s : s + chunk_size], lse[s : s + chunk_size] = _chosen_logprobs_chunk(
                logits, tokens[s : s + chunk_size], temperature
            )
        ctx.save_for_backward(hidden, weight, tokens, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, tokens, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        for s in range(0, hidden.shape[0], ctx.chunk_size):
            h = hidden[s : s + ctx.chunk_size]
            scaled = (h @ weight.t()).float() / ctx.temperature
            g = _dlogits(scaled, lse[s : s + ctx.chunk_size], tokens[s : s + ctx.chunk_size],
                         grad_out[s : s + ctx.chunk_size].float(), ctx.temperature)  # fmt: skip
            if need_h:
                grad_h[s : s + ctx.chunk_size] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += g.t() @ h.float()
        return grad_h, grad_w.to(weight.dtype) if need_w else None, None, None, None


def hidden_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """fp32 ``log_softmax(hidden @ weight.T / temperature)[token]`` for ``hidden[N, H]``, a bias-free
    output head ``weight[V, H]`` and ``tokens[N]``. Peak extra memory is one ``chunk_size x V`` fp32
    block in forward and backward alike (plain autograd would keep every chunk's logits for backward)."""
    if hidden.dim() != 2 or tokens.shape != hidden.shape[:1] or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"expected hidden [N, H], weight [V, H], tokens [N]; got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)}, {tuple(tokens.shape)}"
        )
    return _HiddenTokenLogprobs.apply(hidden, weight, tokens, temperature, chunk_size)


class _TokenLogprobs(torch.autograd.Function):
    """As above from ready logits: saves the logits (already alive, in their own dtype) and the
    ``[N]`` log-normalisers, not an fp32 copy."""

    @staticmethod
    def forward(ctx, logits, tokens, temperature, chunk_size):
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for s in range(0, logits.shape[0], chunk_size):
            out[s : s + chunk_size], lse[s : s + chunk_size] = _chosen_logprobs_chunk(
                logits[s : s + chunk_size], tokens[s : s + chunk_size], temperature
            )
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, tokens, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk_size):
            scaled = logits[s : s + ctx.chunk_size].float() / ctx.temperature
            g = _dlogits(scaled, lse[s : s + ctx.chunk_size], tokens[s : s + ctx.chunk_size],
                         grad_out[s : s + ctx.chunk_size].float(), ctx.temperature)  # fmt: skip
            grad[s : s + ctx.chunk_size] = g.to(logits.dtype)
        return grad, None, None, None


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0, chunk_size: int = 1024
) -> torch.Tensor:
    """fp32 ``log_softmax(logits / temperature)`` at ``token_ids``: ``logits[B, T, V]`` (any dtype),
    ``token_ids[B, T]`` -> ``[B, T]``. Works on ``chunk_size`` positions (batch x sequence flattened)
    at a time, so the largest fp32 tensor is ``chunk_size x V``, in backward too. The caller aligns
    logits and ids (logits at t - 1 predict the token at t)."""
    if logits.dim() != 3 or token_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits [B, T, V] and token_ids [B, T]; got {tuple(logits.shape)}, {tuple(token_ids.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (greedy log-probs use 1), got {temperature}")
    b, t, v = logits.shape
    flat = _TokenLogprobs.apply(logits.reshape(b * t, v), token_ids.reshape(-1), temperature, chunk_size)
    return flat.reshape(b, t)
