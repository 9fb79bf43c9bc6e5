"""Forks, continuous batching, preemption and stopping change nothing but what they should."""

from __future__ import annotations

import pytest
import torch

from picorl.engine import EngineConfig, LLMEngine
from picorl.engine.types import SamplingParams

GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
LENGTHS = [3, 4, 7, 9, 16]


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("qwen2")


@pytest.fixture(scope="module")
def prompts(random_prompts) -> list[list[int]]:
    return random_prompts(LENGTHS)


@pytest.fixture(scope="module")
def reference(model, prompts, hf_greedy) -> list[list[int]]:
    """Greedy completions from a roomy engine, checked against transformers."""
    out = LLMEngine(model, None, EngineConfig(block_size=4, num_blocks=512)).generate(prompts, GREEDY)
    tokens = [group[0].token_ids for group in out]
    for prompt, completion in zip(prompts, tokens):
        expected = hf_greedy(model, prompt, 24)  # transformers stops at EOS; the engine ignored it
        assert completion[: len(expected)] == expected
    return tokens


def test_forked_samples_equal_independent_generation(model, prompts, reference) -> None:
    engine = LLMEngine(model, None, EngineConfig(block_size=4, num_blocks=512))
    out = engine.generate(prompts, GREEDY, n=3)
    assert [[c.token_ids for c in group] for group in out] == [[t] * 3 for t in reference]
    assert engine.last_stats["prefill_tokens"] == sum(LENGTHS), "each prompt is prefilled once, then forked"
    assert engine.last_stats["tokens"] == 3 * 24 * len(LENGTHS)


def test_preemption_gives_the_same_tokens(model, prompts, reference) -> None:
    # 12 blocks of 4 tokens hold one 39-token sequence but not five: decoding must preempt
    engine = LLMEngine(model, None, EngineConfig(block_size=4, num_blocks=12))
    out = engine.generate(prompts, GREEDY)
    assert [group[0].token_ids for group in out] == reference
    assert engine.last_stats["preemptions"] > 0
    assert engine.last_stats["prefill_tokens"] > sum(LENGTHS), "preempted sequences are recomputed"


def test_forks_under_memory_pressure(model, prompts, reference) -> None:
    engine = LLMEngine(model, None, EngineConfig(block_size=4, num_blocks=14))
    out = engine.generate(prompts, GREEDY, n=3)
    assert [[c.token_ids for c in group] for group in out] == [[t] * 3 for t in reference]
    assert engine.last_stats["preemptions"] > 0


def test_small_batch_limits_give_the_same_tokens(model, prompts, reference) -> None:
    # at most 2 sequences and 10 prompt tokens per step: prompts join as others finish,
    # and a group of 3 samples is split (its prompt prefilled again for the rest)
    config = EngineConfig(block_size=4, num_blocks=512, max_num_seqs=2, max_num_batched_tokens=10)
    engine = LLMEngine(model, None, config)
    out = engine.generate(prompts, GREEDY, n=3)
    assert [[c.token_ids for c in group] for group in out] == [[t] * 3 for t in reference]
    assert engine.last_stats["prefill_tokens"] == 2 * sum(LENGTHS), "groups of 3 split into 2 + 1"


def test_bad_requests_are_clear_errors(model) -> None:
    engine = LLMEngine(model, None, EngineConfig(block_size=4, num_blocks=4))
    with pytest.raises(ValueError, match="does not fit the KV cache"):
        engine.generate([[1] * 10], SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="outside"):
        engine.generate([[1, 999]], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="empty"):
        engine.generate([[]], SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="tokenizer"):
        engine.generate([[1]], SamplingParams(max_tokens=2, stop_strings=("x",)))
    with pytest.raises(ValueError, match="cuda_graphs"):
        LLMEngine(model, None, EngineConfig(cuda_graphs=True))


def test_max_tokens_and_stop_tokens(model, prompts, reference) -> None:
    engine = LLMEngine(model, None, EngineConfig(block_size=4, num_blocks=512))
    short = engine.generate(prompts, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True))
    for group, full in zip(short, reference):
        assert group[0].token_ids == full[:5] and group[0].finish_reason == "length"
        assert group[0].stop_reason is None
    # stop on the token id the greedy output of prompt 0 reaches at step 7 (or earlier)
    stop_id = reference[0][6]
    out = engine.generate(
        prompts[:1], SamplingParams(max_tokens=24, temperature=0, stop_token_ids=(stop_id,))
    )
    assert out[0][0].token_ids == reference[0][: reference[0].index(stop_id) + 1]
    assert (out[0][0].finish_reason, out[0][0].stop_reason) == ("stop", stop_id)


def test_eos_stops_unless_ignored(tiny_model, tokenizer, prompts, reference) -> None:
    eos = tokenizer.eos_token_id
    eos_model = tiny_model("qwen2")  # the same weights, but EOS wins where the 4th greedy token did
    with torch.no_grad():
        eos_model.lm_head.weight[eos] = 2 * eos_model.lm_head.weight[reference[0][3]]
    engine = LLMEngine(eos_model, tokenizer, EngineConfig(block_size=4, num_blocks=64))
    normal = engine.generate(prompts[:1], SamplingParams(max_tokens=8, temperature=0))[0][0]
    forced = engine.generate(prompts[:1], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0][0]
    assert eos in forced.token_ids[:4] and forced.finish_reason == "length" and len(forced.token_ids) == 8
    assert normal.token_ids == forced.token_ids[: forced.token_ids.index(eos) + 1]
    assert (normal.finish_reason, normal.stop_reason) == ("stop", eos)
    assert normal.text == tokenizer.decode(normal.token_ids[:-1]), "the EOS token is not in the text"


def test_generation_config_eos_ids_stop_too(tiny_model, prompts, reference) -> None:
    model = tiny_model("qwen2")
    model.generation_config.eos_token_id = [model.generation_config.eos_token_id, reference[0][6]]
    engine = LLMEngine(model, None, EngineConfig(block_size=4, num_blocks=64))
    out = engine.generate(prompts[:1], SamplingParams(max_tokens=24, temperature=0))[0][0]
    assert out.token_ids == reference[0][: reference[0].index(reference[0][6]) + 1]
    assert out.stop_reason == reference[0][6]


def test_stop_strings_end_at_the_completing_token(model, tokenizer, prompts, reference) -> None:
    engine = LLMEngine(model, tokenizer, EngineConfig(block_size=4, num_blocks=512))
    for full, prompt in zip(reference, prompts):
        # an ASCII pair from the greedy output: as bytes, each of its tokens is one character
        pairs = [j for j in range(3, len(full) - 1) if full[j] < 128 and full[j + 1] < 128]
        if not pairs:
            continue
        stop = bytes(full[pairs[0] : pairs[0] + 2]).decode()
        end = min(k + 2 for k in range(len(full) - 1) if bytes(full[k : k + 2]) == stop.encode())
        params = SamplingParams(
            max_tokens=24, temperature=0, ignore_eos=True, stop_strings=("\x00never", stop)
        )
        c = engine.generate([prompt], params)[0][0]
        assert c.token_ids == full[:end]
        assert (c.finish_reason, c.stop_reason) == ("stop", stop)
        assert c.text == tokenizer.decode(full[:end], skip_special_tokens=True) and c.text.endswith(stop)
        return
    pytest.fail("no greedy output holds an ASCII pair to stop on")
