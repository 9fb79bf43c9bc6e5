"""The incremental decode-input builder against the list-based reference (``ModelRunner.prepare_decode``),
over a scheduler run with finishes, preemptions, resumed sequences, new prompts and new blocks."""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch

from picorl.engine.runner.decode_inputs import DecodeInputBuilder
from picorl.engine.runner.model_runner import ModelRunner
from picorl.engine.scheduling.block_manager import BlockManager
from picorl.engine.scheduling.scheduler import Scheduler
from picorl.engine.scheduling.sequence import Sequence

BLOCK_SIZE, NUM_BLOCKS = 4, 24


class CountingBuilder(DecodeInputBuilder):
    """Counts the steps that needed the general (gather) path."""

    gathers = 0

    def _gather(self, *args):
        self.gathers += 1
        return super()._gather(*args)


def test_builder_equals_the_list_reference_step_by_step() -> None:
    rng = random.Random(0)
    scheduler = Scheduler(BlockManager(NUM_BLOCKS, BLOCK_SIZE), max_num_seqs=6, max_num_batched_tokens=64)
    for i in range(8):
        prompt = [rng.randrange(1000) for _ in range(rng.randint(1, 12))]
        scheduler.add(Sequence(prompt, len(prompt), i, list(range(rng.randint(1, 3)))))
    reference = ModelRunner(SimpleNamespace(device=torch.device("cpu"), num_layers=0), None)
    kv = SimpleNamespace(block_size=BLOCK_SIZE, null_block=NUM_BLOCKS)
    builder = CountingBuilder(BLOCK_SIZE, NUM_BLOCKS, torch.device("cpu"))
    sampled = None
    decode_steps = 0
    while not scheduler.is_finished():
        batch = scheduler.schedule()
        if not batch.is_prefill:
            decode_steps += 1
            got = builder.build(batch.seqs, sampled)
            want = reference.prepare_decode(batch.seqs, kv)
            for name in ("input_ids", "positions", "slots", "block_tables", "context_lens"):
                a, b = getattr(got, name), getattr(want, name)
                assert a.dtype == b.dtype and torch.equal(a, b), (
                    f"{name} differs at decode step {decode_steps}"
                )
        tokens = torch.tensor([rng.randrange(1000) for _ in batch.targets])
        if not batch.is_prefill:
            sampled = tokens
        for seq, token in zip(batch.targets, tokens.tolist()):
            seq.token_ids.append(token)
            if seq.num_completion_tokens >= 30 or rng.random() < 0.04:
                scheduler.finish(seq)
    assert scheduler.num_preemptions > 0, "the run exercised preemption and resumption"
    assert 0 < builder.gathers < decode_steps / 2, (
        "most steps took the incremental path, some the general one"
    )
