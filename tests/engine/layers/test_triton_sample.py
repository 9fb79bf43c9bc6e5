"""The one-pass Triton sampler against the torch sampler and exact probabilities (GPU), and the
sampler dispatch (CPU)."""

from __future__ import annotations

import pytest
import torch

from picorl.engine.layers.sampler import make_generator, make_sampler, sample
from picorl.engine.layers.triton_sample import BLOCK, fused_sample, fused_sampling_available
from picorl.engine.types import SamplingParams


def gpu(test):
    """GPU-only test: marked ``gpu`` and skipped visibly without CUDA."""
    skip = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton sampler)")
    return pytest.mark.gpu(skip(test))


def test_cpu_sampler_is_the_seeded_torch_sampler() -> None:
    logits = torch.randn(6, 50)
    params = SamplingParams(temperature=0.7, seed=11)
    assert not fused_sampling_available(torch.device("cpu"))
    first = make_sampler(params, torch.device("cpu"))(logits)
    again = make_sampler(params, torch.device("cpu"))(logits)
    expected = sample(logits, params, make_generator(11, torch.device("cpu")))
    for a, b, c in zip(first, again, expected):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [7, BLOCK, 3 * BLOCK + 5, 151_936])
@gpu
def test_greedy_and_logprobs_equal_torch(vocab, dtype) -> None:
    torch.manual_seed(vocab)
    logits = (4 * torch.randn(33, vocab, device="cuda")).to(dtype)
    ids, logprobs = fused_sample(logits, 0.0, seed=1)
    assert torch.equal(ids, logits.float().argmax(-1))
    expected = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, None])[:, 0]
    torch.testing.assert_close(logprobs, expected, atol=2e-5, rtol=1e-5)
    ids, logprobs = fused_sample(logits, 0.6, seed=2)
    expected = torch.log_softmax(logits.float() / 0.6, -1).gather(-1, ids[:, None])[:, 0]
    torch.testing.assert_close(logprobs, expected, atol=2e-5, rtol=1e-5)
    assert (ids >= 0).all() and (ids < vocab).all()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@gpu
def test_draw_frequencies_follow_the_tempered_distribution(temperature) -> None:
    # four likely tokens spread over different tiles and lanes, among ~12,000 unlikely ones
    vocab, rows = 3 * BLOCK, 200_000
    probs = torch.full((vocab,), 1e-6, dtype=torch.float64)
    heavy = torch.tensor([3, BLOCK + 17, 2 * BLOCK + 3, vocab - 1])
    probs[heavy] = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    probs /= probs.sum()
    logits = probs.log().float().cuda().expand(rows, vocab)  # row stride 0: one row in memory
    ids, _ = fused_sample(logits, temperature, seed=5)
    tempered = probs ** (1 / temperature)
    tempered /= tempered.sum()
    freq = torch.bincount(ids.cpu(), minlength=vocab).double() / rows
    # 200k draws: the standard error of a frequency near 0.3 is ~0.001
    torch.testing.assert_close(freq[heavy], tempered[heavy], atol=0.005, rtol=0)
    assert abs(freq.sum() - freq[heavy].sum() - (1 - tempered[heavy].sum())) < 0.005


@gpu
def test_a_seed_reproduces_a_draw_and_rows_draw_independently() -> None:
    logits = torch.zeros(64, 1000, device="cuda")  # uniform: identical rows must still differ
    a, _ = fused_sample(logits, 1.0, seed=123)
    b, _ = fused_sample(logits, 1.0, seed=123)
    c, _ = fused_sample(logits, 1.0, seed=124)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len(set(a.tolist())) > 50, "rows are not copies of each other"
    with pytest.raises(ValueError, match="seed"):
        fused_sample(logits, 1.0, seed=2**31)


@gpu
def test_engine_sampler_picks_the_kernel_only_without_top_k_and_top_p() -> None:
    cuda = torch.device("cuda")
    logits = torch.randn(8, 300, device=cuda)
    plain = SamplingParams(temperature=0.9, seed=3)
    fused_ids, _ = make_sampler(plain, cuda)(logits)
    assert torch.equal(fused_ids, make_sampler(plain, cuda)(logits)[0])
    top_k = SamplingParams(temperature=0.9, top_k=5, seed=3)
    ids, _ = make_sampler(top_k, cuda)(logits)
    assert torch.equal(ids, sample(logits, top_k, make_generator(3, cuda))[0]), "top-k runs the torch sampler"
    unfused, _ = make_sampler(plain, cuda, fused=False)(logits)
    assert torch.equal(unfused, sample(logits, plain, make_generator(3, cuda))[0])
