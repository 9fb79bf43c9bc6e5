"""Decode steps replayed from CUDA graphs, one graph per batch-size bucket.

An eager decode step of a 4B model spends ~37 ms launching kernels from Python (hundreds of small
kernels a step, each a Python call and a launch); a graph replays the whole step (embedding to logits, LoRA layers included) in one launch. Each
graph reads its inputs from static buffers: a batch of B sequences runs in the smallest captured
size >= B, the extra rows pointing at the KV cache's null block. Graphs bake in the addresses of the
weights and the KV cache, so the engine re-captures when either moves (see
``architecture.weights_signature``); weight *values* may change freely (optimizer steps).
"""

from __future__ import annotations

import torch

from picorl.engine.memory.kv_cache import KVCache
from picorl.engine.runner.model_runner import DecodeInputs, ModelRunner


class DecodeGraphs:
    def __init__(
        self, runner: ModelRunner, kv: KVCache, batch_sizes: tuple[int, ...], max_blocks: int
    ) -> None:
        self.runner = runner
        self.kv = kv
        self.batch_sizes = tuple(sorted(batch_sizes))
        self.max_blocks = max_blocks
        device = runner.spec.device
        largest = self.batch_sizes[-1]
        self.inputs = DecodeInputs(
            input_ids=torch.zeros(largest, dtype=torch.int64, device=device),
            positions=torch.zeros(largest, dtype=torch.int64, device=device),
            slots=torch.full((largest,), kv.null_block * kv.block_size, dtype=torch.int64, device=device),
            block_tables=torch.full((largest, max_blocks), kv.null_block, dtype=torch.int32, device=device),
            context_lens=torch.ones(largest, dtype=torch.int32, device=device),
        )
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # kept alive so no later capture reuses their memory

    def capture(self) -> None:
        pool = None
        for size in reversed(self.batch_sizes):  # largest first: smaller graphs fit in its pool
            inputs = self._static(size)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture (lazy init, autotuning)
                self.runner.decode(inputs, self.kv)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self.runner.decode(inputs, self.kv)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def fits(self, inputs: DecodeInputs) -> bool:
        return (
            inputs.input_ids.shape[0] <= self.batch_sizes[-1]
            and inputs.block_tables.shape[1] <= self.max_blocks
        )

    def run(self, inputs: DecodeInputs) -> torch.Tensor:
        """Logits ``[B, vocab]``; valid until the next replay."""
        batch, width = inputs.block_tables.shape
        size = next(s for s in self.batch_sizes if s >= batch)
        static = self.inputs
        static.input_ids[:batch] = inputs.input_ids
        static.positions[:batch] = inputs.positions
        static.slots[:batch] = inputs.slots
        static.context_lens[:batch] = inputs.context_lens
        # columns past a row's context are never read, so stale entries there are harmless
        static.block_tables[:batch, :width] = inputs.block_tables
        if batch < size:
            static.input_ids[batch:size] = 0
            static.positions[batch:size] = 0
            static.slots[batch:size] = self.kv.null_block * self.kv.block_size
            static.context_lens[batch:size] = 1
            static.block_tables[batch:size] = self.kv.null_block
        self.graphs[size].replay()
        return self.outputs[size][:batch]

    def _static(self, size: int) -> DecodeInputs:
        s = self.inputs
        return DecodeInputs(
            s.input_ids[:size],
            s.positions[:size],
            s.slots[:size],
            s.block_tables[:size],
            s.context_lens[:size],
        )
