"""Continuous batching: which sequences run in the next model step.

Each step is either a prefill (admit waiting sequences: new prompts, forked into their samples right
after, or preempted ones to recompute) or a decode (one token for every running sequence). Waiting
sequences are admitted whenever blocks and the batch limits allow, so new prompts join while others
are mid-generation. When a decoding sequence needs a block and none is free, the youngest running
sequence is preempted: its blocks are released and it waits to be recomputed from its tokens, which
changes no result (the recomputed KV equals the lost one up to float rounding).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from picorl.engine.scheduling.block_manager import BlockManager
from picorl.engine.scheduling.sequence import Sequence, Status


@dataclass
class Batch:
    """One model step.

    ``seqs`` are the sequences the model runs (prefill: all their tokens; decode: their last one).
    ``targets`` receive the sampled tokens; target i samples from logits row ``rows[i]`` (a prompt's
    row is shared by all its forked samples). ``block_copies`` (source, destination) must be applied
    to the KV cache after the step's forward pass, which fills the sources.
    """

    is_prefill: bool
    seqs: list[Sequence]
    targets: list[Sequence]
    rows: list[int]
    block_copies: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.seqs) if self.is_prefill else len(self.seqs)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()  # oldest first: the youngest is preempted first
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def is_finished(self) -> bool:
        return not self.waiting and not self.running

    def schedule(self) -> Batch:
        batch = self._schedule_prefill()
        if batch.seqs:
            return batch
        if not self.running:
            seq = self.waiting[0]
            raise RuntimeError(
                f"a sequence of {len(seq)} tokens does not fit in an empty KV cache of {self.blocks.num_blocks} "
                f"blocks x {self.blocks.block_size} tokens; give the engine a larger KV cache"
            )
        return self._schedule_decode()

    def finish(self, seq: Sequence) -> None:
        self.blocks.release(seq.block_table)
        seq.status = Status.FINISHED
        self.running.remove(seq)

    def _schedule_prefill(self) -> Batch:
        batch = Batch(is_prefill=True, seqs=[], targets=[], rows=[])
        num_tokens, num_seqs = 0, len(self.running)
        while self.waiting and num_seqs < self.max_num_seqs:
            seq = self.waiting[0]
            if batch.seqs and num_tokens + len(seq) > self.max_num_batched_tokens:
                break
            need = self.blocks.blocks_for(len(seq))
            spare = self.blocks.num_free - need
            if spare < 0:
                break
            per_fork = self.blocks.fork_cost(len(seq))
            max_samples = 1 + spare // per_fork if per_fork else len(seq.sample_indices)
            count = min(len(seq.sample_indices), self.max_num_seqs - num_seqs, max_samples)
            self.waiting.popleft()
            if count < len(seq.sample_indices):  # the others wait; their prompt is prefilled again later
                self.waiting.appendleft(seq.split_samples(count))
            seq.block_table = self.blocks.allocate(need)
            seq.status = Status.RUNNING
            row = len(batch.seqs)
            batch.seqs.append(seq)
            group = [seq]
            for sample in seq.sample_indices[1:]:
                table, copy = self.blocks.fork(seq.block_table, len(seq))
                group.append(seq.fork(sample, table))
                if copy is not None:
                    batch.block_copies.append(copy)
            seq.sample_indices = seq.sample_indices[:1]
            batch.targets.extend(group)
            batch.rows.extend([row] * len(group))
            self.running.extend(group)
            num_tokens += len(seq)
            num_seqs += len(group)
        return batch

    def _schedule_decode(self) -> Batch:
        scheduled: list[Sequence] = []
        while self.running:
            seq = self.running.popleft()
            needs_block = self.blocks.needs_block(seq.block_table, len(seq))
            while needs_block and self.blocks.num_free == 0 and self.running:
                self._preempt(self.running.pop())
            if needs_block and self.blocks.num_free == 0:
                self._preempt(seq)
                continue
            if needs_block:
                seq.block_table += self.blocks.allocate(1)
            scheduled.append(seq)
        if not scheduled:
            raise RuntimeError(
                "no running sequence fits in the KV cache (scheduler bug: generate checks lengths)"
            )
        self.running.extend(scheduled)
        return Batch(
            is_prefill=False, seqs=scheduled, targets=list(scheduled), rows=list(range(len(scheduled)))
        )

    def _preempt(self, seq: Sequence) -> None:
        self.blocks.release(seq.block_table)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
