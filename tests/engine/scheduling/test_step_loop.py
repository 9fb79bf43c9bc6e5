"""Running a decode step ahead (before the previous step's tokens reach the host) changes no result."""

from __future__ import annotations

import pytest

from picorl.engine import EngineConfig, LLMEngine
from picorl.engine.scheduling.step_loop import PLACEHOLDER
from picorl.engine.types import SamplingParams

LENGTHS = [3, 4, 7, 9, 16]


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("qwen3")


@pytest.fixture(scope="module")
def prompts(random_prompts) -> list[list[int]]:
    return random_prompts(LENGTHS)


def generate(model, prompts, params, n=1, run_ahead=True, **config):
    """Completions and how many decode steps were launched ahead of their predecessor's tokens."""
    engine = LLMEngine(model, None, EngineConfig(block_size=4, run_ahead=run_ahead, **config))
    ahead = []
    run = engine._run

    def spy(batch, decoded):
        ahead.append(any(s.token_ids[-1] == PLACEHOLDER for s in batch.seqs))
        return run(batch, decoded)

    engine._run = spy
    out = engine.generate(prompts, params, n=n)
    return [[(c.token_ids, c.finish_reason, c.stop_reason) for c in g] for g in out], out, sum(ahead), engine


def stop_ids_hit_mid_run(model, prompts) -> tuple[int, ...]:
    """Token ids that end some greedy completions early, at different steps."""
    forced = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    tokens, *_ = generate(model, prompts, forced, run_ahead=False, num_blocks=512)
    return tuple({g[0][0][i] for i, g in zip((2, 5, 9), tokens)})


@pytest.mark.parametrize("num_blocks", [512, 14])  # 14: decoding preempts, admitting again later
def test_run_ahead_equals_step_by_step_with_stops_forks_and_preemption(model, prompts, num_blocks) -> None:
    params = SamplingParams(max_tokens=24, temperature=0, stop_token_ids=stop_ids_hit_mid_run(model, prompts))
    expected, ref_out, ref_ahead, _ = generate(model, prompts, params, 3, False, num_blocks=num_blocks)
    got, out, ahead, engine = generate(model, prompts, params, 3, True, num_blocks=num_blocks)
    assert ref_ahead == 0 and ahead > 10, "the step-by-step loop never runs ahead; this one mostly does"
    assert got == expected
    reasons = {c[1] for g in got for c in g}
    assert reasons == {"stop", "length"}, "some sequences stop on a token, mid-run, and others at the cap"
    for group, ref_group in zip(out, ref_out):
        for c, r in zip(group, ref_group):
            assert len(c.logprobs) == len(c.token_ids)
            assert c.logprobs == pytest.approx(r.logprobs, abs=1e-5)
    if num_blocks == 14:
        assert engine.last_stats["preemptions"] > 0


def test_run_ahead_with_a_seat_limit_and_sampling(model, prompts) -> None:
    # two seats for five prompts: new prompts wait (no running ahead) until seats free up
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=3, ignore_eos=True)
    expected, _, _, _ = generate(model, prompts, params, 2, False, num_blocks=512, max_num_seqs=2)
    got, out, ahead, engine = generate(model, prompts, params, 2, True, num_blocks=512, max_num_seqs=2)
    assert ahead > 0
    assert got == expected, "with only length stops no row is dropped, so even the draws are the same"
    assert engine.last_stats["tokens"] == 2 * 12 * len(LENGTHS)
    assert all(PLACEHOLDER not in c.token_ids for g in out for c in g)
