"""The CUDA-graph runner's static buffers, checked on CPU: a stand-in "graph" replays the decode step
eagerly on the static buffers, so padding rows, the null block and stale block-table columns are
exercised exactly as a real replay would see them."""

from __future__ import annotations

import torch

from picorl.engine import EngineConfig, LLMEngine
from picorl.engine.runner.cuda_graphs import DecodeGraphs
from picorl.engine.types import SamplingParams


class EagerReplay:
    def __init__(self, graphs: DecodeGraphs, size: int) -> None:
        self.graphs, self.size = graphs, size

    def replay(self) -> None:
        out = self.graphs.runner.decode(self.graphs._static(self.size), self.graphs.kv)
        self.graphs.outputs[self.size].copy_(out)


class CPUGraphs(DecodeGraphs):
    def capture(self) -> None:
        for size in self.batch_sizes:
            self.outputs[size] = self.runner.decode(self._static(size), self.kv)
            self.graphs[size] = EagerReplay(self, size)  # type: ignore[assignment]
        self.replays = 0

    def run(self, inputs):
        self.replays += 1
        return super().run(inputs)


def assert_same(out, expected) -> None:
    """Same tokens; log-probs equal up to the summation order of a wider (padded) attention."""
    for group, expected_group in zip(out, expected, strict=True):
        for c, e in zip(group, expected_group, strict=True):
            assert c.token_ids == e.token_ids and c.finish_reason == e.finish_reason
            torch.testing.assert_close(torch.tensor(c.logprobs), torch.tensor(e.logprobs), atol=1e-5, rtol=0)


def test_static_buffers_give_the_eager_results(tiny_model, random_prompts) -> None:
    model = tiny_model("qwen3")
    prompts = random_prompts([3, 4, 7, 9, 16, 1, 30])
    params = SamplingParams(max_tokens=20, temperature=0.9, seed=4)
    config = EngineConfig(block_size=4, num_blocks=96)
    reference = LLMEngine(model, None, config)

    engine = LLMEngine(model, None, config)
    engine.wake_up()
    with torch.inference_mode():  # sizes 1-8, block tables of at most 9 blocks (36 tokens)
        engine.graphs = CPUGraphs(engine.runner, engine.kv, (1, 2, 4, 8), max_blocks=9)
        engine.graphs.capture()
    # 6 and then 3 sequences run padded to 8 and 4 rows; each call leaves stale rows and columns
    for batch, n in ((prompts[:3], 2), (prompts[2:3], 3), (prompts[:1], 1)):
        engine.graphs.replays = 0
        assert_same(engine.generate(batch, params, n=n), reference.generate(batch, params, n=n))
        assert engine.graphs.replays == 19, "every decode step replayed"
    # 14 sequences, and tables wider than 9 blocks: eager fallback
    engine.graphs.replays = 0
    assert_same(engine.generate(prompts, params, n=2), reference.generate(prompts, params, n=2))
    assert engine.graphs.replays == 0
