"""The paged KV cache: its memory (behind a small storage interface), its size, and its layout.

Layout: one tensor ``[2, num_layers, num_blocks + 1, block_size, num_kv_heads, head_dim]`` (K then
V), so each layer's K or V is a contiguous ``[num_blocks + 1, block_size, kv_heads, head_dim]`` view
and one indexed copy moves a block across all layers. The extra last block is a scratch ("null")
block the block manager never hands out: padded rows of a CUDA-graph batch write and read it.

The memory comes from a :class:`KVStorage`, so that sleep/wake can be done by plain free and
re-allocate (:class:`TorchKVStorage`) or by CUDA virtual memory that keeps the address and thus the
captured CUDA graphs valid (``picorl.engine.memory.vmm.VMMKVStorage``).
"""

from __future__ import annotations

import os
from typing import Protocol

import torch

from picorl.units import GIB

DEFAULT_GPU_FRACTION = 0.5  # of the free GPU memory, when no size is given
DEFAULT_CPU_GIB = 1.0  # pages are touched only as blocks fill, so this costs nothing up front


class KVStorage(Protocol):
    """Where KV-cache bytes live.

    ``allocate`` is called once; after it, ``release`` / ``restore`` alternate (sleep / wake).
    ``restore`` returns the buffer to use from then on; when ``keeps_address`` is True it is at the
    same address as before, so CUDA graphs captured on it stay valid. ``close`` frees everything.
    """

    keeps_address: bool

    def allocate(self, num_bytes: int) -> torch.Tensor:
        """A 1-D uint8 tensor of ``num_bytes`` on the storage's device."""
        ...

    def release(self) -> None: ...

    def restore(self) -> torch.Tensor: ...

    def close(self) -> None: ...


class TorchKVStorage:
    """Plain tensors: release frees them, restore allocates anew (maybe at another address).

    On CUDA it empties PyTorch's allocator cache both ways: on release so the memory really goes
    back, and before re-allocating so a wake after training never fails because the training's
    freed blocks fragment the cache (footgun 1 of the seed: OOM at wake_up).
    """

    keeps_address = False

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.num_bytes = 0
        self.buffer: torch.Tensor | None = None

    def allocate(self, num_bytes: int) -> torch.Tensor:
        self.num_bytes = num_bytes
        return self.restore()

    def release(self) -> None:
        self.buffer = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def restore(self) -> torch.Tensor:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.buffer = torch.empty(self.num_bytes, dtype=torch.uint8, device=self.device)
        return self.buffer

    def close(self) -> None:
        self.release()


def make_kv_storage(kind: str, device: torch.device) -> KVStorage:
    """``torch``, ``vmm`` (CUDA virtual memory) or ``auto`` (vmm when CUDA and cuda-bindings are there)."""
    if kind == "torch" or (kind == "auto" and device.type != "cuda"):
        return TorchKVStorage(device)
    from picorl.engine.memory.vmm import VMMKVStorage, vmm_available

    if vmm_available() and device.type == "cuda":
        return VMMKVStorage(device)
    if kind == "vmm":
        raise ValueError(
            f"kv_storage='vmm' needs a CUDA device and cuda-bindings (model on {device}); use 'auto' or 'torch'"
        )
    return TorchKVStorage(device)


def block_bytes(
    num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    """Bytes of K and V for one block across all layers."""
    return 2 * num_layers * block_size * num_kv_heads * head_dim * dtype.itemsize


def kv_budget_bytes(
    device: torch.device,
    kv_cache_gib: float | None = None,
    kv_cache_fraction: float | None = None,
    reserve_bytes: int = 0,
) -> int:
    """The KV-cache budget in bytes: ``kv_cache_gib`` if set, else ``kv_cache_fraction`` of the memory
    available now (half of it on a GPU when neither is set; 1 GiB on a CPU).

    On a GPU, "available" is free memory plus what torch's allocator caches but does not use, minus
    ``reserve_bytes`` (what training transiently needs on top of what it keeps: call this with the
    cache released after a training step, so free memory already excludes the weights and optimizer
    state). A fixed size larger than that is refused with a ``MemoryError``.
    """
    if device.type != "cuda":
        if kv_cache_gib is not None:
            return int(kv_cache_gib * GIB)
        if kv_cache_fraction is None:
            return int(DEFAULT_CPU_GIB * GIB)
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * kv_cache_fraction)
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = free + cached - reserve_bytes
    if available <= 0:
        raise MemoryError(
            f"no GPU memory left for a KV cache: {free / GIB:.2f} GiB free + {cached / GIB:.2f} GiB cached, "
            f"{reserve_bytes / GIB:.2f} GiB reserved"
        )
    if kv_cache_gib is None:
        return int(available * (kv_cache_fraction or DEFAULT_GPU_FRACTION))
    wanted = int(kv_cache_gib * GIB)
    if wanted > available:
        raise MemoryError(
            f"KV-cache budget of {kv_cache_gib} GiB exceeds the {available / GIB:.2f} GiB available "
            "(free + cached - reserve); lower kv_cache_gib or use kv_cache_fraction"
        )
    return wanted


class KVCache:
    """Typed per-layer views of the storage buffer (see the module docstring for the layout)."""

    def __init__(
        self,
        buffer: torch.Tensor,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
    ) -> None:
        shape = (2, num_layers, num_blocks + 1, block_size, num_kv_heads, head_dim)
        numel = 2 * num_layers * (num_blocks + 1) * block_size * num_kv_heads * head_dim
        self.kv = buffer[: numel * dtype.itemsize].view(dtype).view(shape)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.null_block = num_blocks
        self.keys = [self.kv[0, i] for i in range(num_layers)]
        self.values = [self.kv[1, i] for i in range(num_layers)]

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy whole blocks (all layers, K and V): ``copies`` holds (source, destination) pairs."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.kv.device)
        dst = torch.tensor([d for _, d in copies], device=self.kv.device)
        self.kv.index_copy_(2, dst, self.kv.index_select(2, src))

    @property
    def dtype(self) -> torch.dtype:
        return self.kv.dtype

    @property
    def data_ptr(self) -> int:
        return self.kv.data_ptr()
