"""The engine's pieces against slow references and hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from picorl.engine import EngineConfig, LLMEngine
from picorl.engine.layers.attention import (
    decode_attention_backend,
    paged_decode_attention_torch,
    prefill_attention,
)
from picorl.engine.layers.sampler import make_generator, sample, truncate
from picorl.engine.memory.kv_cache import TorchKVStorage, make_kv_storage
from picorl.engine.scheduling.block_manager import BlockManager
from picorl.engine.scheduling.sequence import Sequence
from picorl.engine.scheduling.stopping import StopChecker
from picorl.engine.types import SamplingParams


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of q [T, H, D] over k, v [S, KVH, D], the queries being the last T of S keys."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k) * scale
    offset = k.shape[0] - q.shape[0]
    future = torch.arange(k.shape[0])[None] > torch.arange(q.shape[0])[:, None] + offset
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    return torch.einsum("hts,shd->thd", weights, v)


def test_block_manager_shares_prompt_blocks_and_frees_at_zero_refs() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    parent = bm.allocate(bm.blocks_for(10))  # 3 blocks, the last holds 2 tokens
    assert bm.fork_cost(10) == 1 and bm.fork_cost(8) == 0
    child, copy = bm.fork(parent, 10)
    assert child[:2] == parent[:2] and child[2] != parent[2] and copy == (parent[2], child[2])
    assert bm.num_free == 4
    aligned, no_copy = bm.fork(parent[:2], 8)
    assert aligned == parent[:2] and no_copy is None
    assert bm.needs_block(child, 13) and not bm.needs_block(child, 12)
    bm.release(parent)
    assert bm.num_free == 5, "only the parent's own partial block is free; siblings hold the others"
    bm.release(child)
    bm.release(aligned)
    assert bm.num_free == 8 and all(r == 0 for r in bm.ref_counts)


def test_paged_decode_attention_matches_contiguous_attention() -> None:
    torch.manual_seed(0)
    num_blocks, block_size, kv_heads, heads, dim = 12, 4, 2, 6, 8
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, dim)
    lens = [1, 5, 9, 12]
    tables = [[7], [3, 0], [11, 2, 5], [1, 4, 6]]
    width = max(map(len, tables))
    # slots past each context hold NaN: unwritten cache memory may, and must not leak in
    for table, n in zip(tables, lens):
        for pos in range(n, len(table) * block_size):
            k_cache[table[pos // block_size], pos % block_size] = float("nan")
            v_cache[table[pos // block_size], pos % block_size] = float("nan")
    block_tables = torch.tensor([t + [9] * (width - len(t)) for t in tables], dtype=torch.int32)
    q = torch.randn(len(lens), heads, dim)
    out = paged_decode_attention_torch(
        q, k_cache, v_cache, block_tables, torch.tensor(lens, dtype=torch.int32), 0.3
    )
    for b, (table, n) in enumerate(zip(tables, lens)):
        k = torch.cat([k_cache[i] for i in table])[:n]
        v = torch.cat([v_cache[i] for i in table])[:n]
        torch.testing.assert_close(out[b], naive_attention(q[b : b + 1], k, v, 0.3)[0])


def test_prefill_attention_matches_per_sequence_attention() -> None:
    torch.manual_seed(1)
    lens = [5, 6, 1, 17, 16, 3, 9]  # several length buckets, some padded
    n = sum(lens)
    q, k, v = torch.randn(n, 4, 8), torch.randn(n, 2, 8), torch.randn(n, 2, 8)
    out = prefill_attention(q, k, v, lens, 0.25)
    start = 0
    for length in lens:
        s = slice(start, start + length)
        torch.testing.assert_close(out[s], naive_attention(q[s], k[s], v[s], 0.25))
        start += length


def test_truncation_keeps_the_top_k_and_the_nucleus() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]]))
    inf = float("-inf")
    assert truncate(logits, 2, 1.0).isinf().tolist() == [[False, True, False, True]]
    # mass before each token (sorted): 0, 0.5, 0.8, 0.95 -> top_p 0.8 keeps the first two
    assert truncate(logits, 0, 0.8)[0].tolist()[1::2] == [inf, inf]
    assert not truncate(logits, 0, 0.81)[0, 3].isinf()
    assert truncate(logits, 0, 0.01).isinf().sum() == 3, "the most likely token always stays"


def test_sampling_frequencies_and_logprobs() -> None:
    probs = torch.tensor([0.5, 0.05, 0.3, 0.15])
    logits = torch.log(probs).repeat(40_000, 1)
    generator = make_generator(0, torch.device("cpu"))
    ids, logprobs = sample(logits, SamplingParams(temperature=1.0, top_k=2), generator)
    freq = torch.bincount(ids, minlength=4) / len(ids)
    torch.testing.assert_close(freq, torch.tensor([0.625, 0.0, 0.375, 0.0]), atol=0.01, rtol=0)
    # log-probs are of the untruncated distribution
    torch.testing.assert_close(logprobs, torch.log(probs)[ids])
    ids, logprobs = sample(logits, SamplingParams(temperature=2.0), generator)
    tempered = probs.sqrt() / probs.sqrt().sum()
    freq = torch.bincount(ids, minlength=4) / len(ids)
    torch.testing.assert_close(freq, tempered, atol=0.01, rtol=0)
    torch.testing.assert_close(logprobs, torch.log(tempered)[ids])
    ids, logprobs = sample(logits[:3], SamplingParams(temperature=0), generator)
    assert ids.tolist() == [0, 0, 0] and math.isclose(logprobs[0].item(), math.log(0.5), rel_tol=1e-6)


def test_stop_strings_across_multibyte_tokens(tokenizer) -> None:
    checker = StopChecker(SamplingParams(max_tokens=50, stop_strings=("é!",)), set(), tokenizer)
    seq = Sequence([65], 1, 0, [0])
    for token in "abé".encode():
        seq.token_ids.append(token)
        assert checker(seq) is None
    seq.token_ids.append(ord("!"))
    assert checker(seq) == ("stop", "é!")
    # a long completion: only its tail is decoded, which still holds the whole stop string
    seq = Sequence([65], 1, 0, [0])
    for token in ("x" * 40 + "é").encode():
        seq.token_ids.append(token)
        assert checker(seq) is None
    seq.token_ids.append(ord("!"))
    assert checker(seq) == ("stop", "é!")


def test_config_validation_and_graph_sizes() -> None:
    with pytest.raises(ValueError, match="kv_cache_fraction"):
        EngineConfig(kv_cache_fraction=1.5)
    with pytest.raises(ValueError, match="decode_attention"):
        EngineConfig(decode_attention="flash")
    assert EngineConfig(dtype="bf16").dtype == torch.bfloat16
    assert EngineConfig(max_num_seqs=40).graph_batch_sizes() == (1, 2, 4, 8, 16, 32, 40)
    assert EngineConfig(cuda_graph_batch_sizes=(8, 1, 8)).graph_batch_sizes() == (1, 8)


def test_gpu_backends_refuse_a_cpu_model_clearly(tiny_model) -> None:
    cpu = torch.device("cpu")
    assert decode_attention_backend("auto", cpu) is paged_decode_attention_torch
    assert isinstance(make_kv_storage("auto", cpu), TorchKVStorage)
    with pytest.raises(ValueError, match="triton"):
        LLMEngine(tiny_model("llama"), None, EngineConfig(decode_attention="triton"))
    with pytest.raises(ValueError, match="vmm"):
        make_kv_storage("vmm", cpu)
