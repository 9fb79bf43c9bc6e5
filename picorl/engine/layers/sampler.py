"""Sampling on the logits' device, in fp32: greedy, temperature, top-k, top-p.

The log-prob returned for each sampled token is under ``log_softmax(logits / T)`` (T = 1 when
greedy), before top-k / top-p truncation: the quantity the trainer recomputes (see
``picorl.engine.types``). Randomness comes only from the seed (or the generator passed in), so a
seed reproduces a run. On CUDA, without top-k / top-p, one Triton pass does it all
(``triton_sample.py``); otherwise the torch code below.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch

from picorl.engine.layers.triton_sample import fused_sample, fused_sampling_available
from picorl.engine.types import SamplingParams

Sampler = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def make_sampler(params: SamplingParams, device: torch.device, fused: bool = True) -> Sampler:
    """``logits [B, vocab] -> (ids [B], logprobs [B])`` for one generate call, seeded by ``params.seed``
    (or by the global torch RNG when None). ``fused`` allows the one-pass Triton kernel where it applies."""
    seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
    plain = params.top_k == 0 and params.top_p == 1.0
    if fused and plain and fused_sampling_available(device):
        steps = random.Random(seed)  # one 31-bit kernel seed per step, reproducible from the seed
        return lambda logits: fused_sample(logits, params.temperature, steps.getrandbits(31))
    generator = make_generator(seed, device)
    return lambda logits: sample(logits, params, generator)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator seeded by ``seed``, or by the global torch RNG when None (so torch.manual_seed holds)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[B]`` (int64) and their fp32 log-probs ``[B]`` for logits ``[B, vocab]``."""
    logits = logits.float()
    if params.greedy:
        ids = logits.argmax(dim=-1)
        return ids, _logprob_of(logits, ids)
    scaled = logits / params.temperature
    probs = truncate(scaled, params.top_k, params.top_p).softmax(dim=-1)
    # Gumbel-max in exponential form: argmax p / E with E ~ Exp(1) draws index i with probability p_i
    noise = torch.empty_like(probs).exponential_(generator=generator).clamp_min_(1e-30)  # 0 would make 0/0
    ids = (probs / noise).argmax(dim=-1)
    return ids, _logprob_of(scaled, ids)


def truncate(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits with everything outside the top-k and the top-p nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``
    (a token is kept when the mass strictly before it is below ``top_p``).
    """
    if 0 < top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        scaled = torch.empty_like(scaled).scatter_(-1, order, sorted_logits)
    return scaled


def _logprob_of(scaled: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return scaled.gather(-1, ids[:, None])[:, 0] - torch.logsumexp(scaled, dim=-1)
