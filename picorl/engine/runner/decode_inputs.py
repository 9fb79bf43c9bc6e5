"""Decode-step inputs built on the device from the previous step's, not from Python lists.

Built from lists, the inputs of one decode step at batch 256 and context ~1,000 (block tables alone
are 256 x 64 ints) took ~1.3 ms of host time while the GPU waited. A sequence that was in the
previous decode step has moved on by exactly one token since: its position and context length grow
by one, its input id is the token sampled there (still on the device), and its block table gains at
most the block the scheduler just gave it. So only that new block, and the sequences new to decoding
(just prefilled, or resumed after a preemption), go from the host to the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from picorl.engine.runner.model_runner import DecodeInputs
from picorl.engine.scheduling.sequence import Sequence


class DecodeInputBuilder:
    """Makes :class:`DecodeInputs` step after step; ``reset()`` at the start of each generate call."""

    def __init__(self, block_size: int, null_block: int, device: torch.device) -> None:
        self.block_size = block_size
        self.null_block = null_block
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.prev: DecodeInputs | None = None
        self.prev_seqs: list[Sequence] = []  # held so that their ids are not reused by new objects
        self.rows: dict[int, tuple[int, int, int]] = {}  # id(seq) -> (row, length, blocks) last step

    def build(self, seqs: list[Sequence], sampled: torch.Tensor | None) -> DecodeInputs:
        """Inputs for a decode step of ``seqs``. ``sampled`` holds the ids sampled at the previous
        decode step, one per row of it (None when there was none this generate call)."""
        width = max(len(s.block_table) for s in seqs)
        src, dst, fresh, grown = [], [], [], []
        for row, seq in enumerate(seqs):
            prev = self.rows.get(id(seq)) if sampled is not None else None
            if prev is not None and prev[1] + 1 == len(seq) and prev[2] <= len(seq.block_table):
                src.append(prev[0])
                dst.append(row)
                grown += [(row, col, seq.block_table[col]) for col in range(prev[2], len(seq.block_table))]
            else:
                fresh.append(row)

        batch = len(seqs)
        if not fresh and src == list(range(batch)) and width >= self.prev.block_tables.shape[1]:
            # the common case: the same sequences as last step (or the first rows of them), in order
            ids, positions = sampled[:batch], self.prev.positions[:batch] + 1
            tables = self.prev.block_tables[:batch]  # last step's: updated in place below
            if width > tables.shape[1]:
                tables = F.pad(tables, (0, width - tables.shape[1]), value=self.null_block)
        else:
            ids, positions, tables = self._gather(seqs, width, sampled, src, dst, fresh)
        if grown:
            rows, cols, blocks = (self._tensor(list(x), torch.int64) for x in zip(*grown))
            tables[rows, cols] = blocks.to(torch.int32)
        inputs = DecodeInputs(
            input_ids=ids,
            positions=positions,
            slots=self._slots(tables, positions),
            block_tables=tables,
            context_lens=(positions + 1).to(torch.int32),
        )
        self.prev, self.prev_seqs = inputs, list(seqs)
        self.rows = {id(s): (i, len(s), len(s.block_table)) for i, s in enumerate(seqs)}
        return inputs

    def _gather(
        self,
        seqs: list[Sequence],
        width: int,
        sampled: torch.Tensor | None,
        src: list[int],
        dst: list[int],
        fresh: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input ids, positions and block tables: rows ``dst`` from rows ``src`` of the previous
        step, one token on; rows ``fresh`` from the sequences' lists."""
        batch, device = len(seqs), self.device
        ids = torch.empty(batch, dtype=torch.int64, device=device)
        positions = torch.empty(batch, dtype=torch.int64, device=device)
        tables = torch.full((batch, width), self.null_block, dtype=torch.int32, device=device)
        if src:
            src_t, dst_t = self._tensor(src, torch.int64), self._tensor(dst, torch.int64)
            ids[dst_t] = sampled[src_t]
            positions[dst_t] = self.prev.positions[src_t] + 1
            cols = min(width, self.prev.block_tables.shape[1])
            tables[dst_t, :cols] = self.prev.block_tables[src_t, :cols]
        if fresh:
            rows = self._tensor(fresh, torch.int64)
            new = [seqs[i] for i in fresh]
            ids[rows] = self._tensor([s.token_ids[-1] for s in new], torch.int64)
            positions[rows] = self._tensor([len(s) - 1 for s in new], torch.int64)
            padded = [s.block_table + [self.null_block] * (width - len(s.block_table)) for s in new]
            tables[rows] = self._tensor(padded, torch.int32)
        return ids, positions, tables

    def _slots(self, tables: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Flat KV-cache slot of each row's current token: its block * block_size + offset."""
        blocks = tables.gather(1, (positions // self.block_size)[:, None])[:, 0].to(torch.int64)
        return blocks * self.block_size + positions % self.block_size

    def _tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """A host list on the device; through pinned memory on CUDA, so the copy does not wait for
        the GPU to finish its queued work (a pageable copy would)."""
        host = torch.tensor(values, dtype=dtype)
        if self.device.type == "cuda":
            return host.pin_memory().to(self.device, non_blocking=True)
        return host.to(self.device)
