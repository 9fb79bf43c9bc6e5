"""Which KV-cache blocks are free, and how many sequences hold each of the others.

Blocks are reference counted so that the n samples of a prompt can hold the prompt's full blocks
together. A block is written only while exactly one sequence holds it: the last, partial block of a
prompt is copied for each extra sample at the fork, and later tokens go to blocks of their own.
"""

from __future__ import annotations

from collections import deque


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.ref_counts = [0] * num_blocks
        self.free_ids: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free_ids)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def allocate(self, count: int) -> list[int]:
        if count > len(self.free_ids):
            raise RuntimeError(f"asked for {count} KV blocks with {len(self.free_ids)} free (scheduler bug)")
        ids = [self.free_ids.popleft() for _ in range(count)]
        for i in ids:
            self.ref_counts[i] = 1
        return ids

    def release(self, block_table: list[int]) -> None:
        """Drop one reference to each block; blocks nobody holds any more become free."""
        for i in block_table:
            self.ref_counts[i] -= 1
            assert self.ref_counts[i] >= 0, f"block {i} released more often than held"
            if self.ref_counts[i] == 0:
                self.free_ids.append(i)
        block_table.clear()

    def fork_cost(self, num_tokens: int) -> int:
        """Blocks one extra sample of a ``num_tokens`` prompt needs: a copy of the partial last block."""
        return int(num_tokens % self.block_size != 0)

    def fork(self, block_table: list[int], num_tokens: int) -> tuple[list[int], tuple[int, int] | None]:
        """A block table for a sibling: full blocks shared, the partial last one copied.

        Returns the table and the (source, destination) block copy the caller must perform on the
        KV cache, or None when every block is full.
        """
        num_full = num_tokens // self.block_size
        shared = block_table[:num_full]
        for i in shared:
            self.ref_counts[i] += 1
        if num_full == len(block_table):
            return list(shared), None
        (copy,) = self.allocate(1)
        return shared + [copy], (block_table[num_full], copy)

    def needs_block(self, block_table: list[int], num_tokens: int) -> bool:
        """Whether writing token ``num_tokens - 1`` needs a block beyond ``block_table``."""
        return len(block_table) * self.block_size < num_tokens
