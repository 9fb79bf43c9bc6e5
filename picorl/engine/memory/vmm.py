"""KV-cache memory that can be handed back to the GPU without moving its address (CUDA virtual memory).

``VirtualKVStorage`` reserves a virtual address range once and maps physical memory into it. Tensors
made from it, and CUDA graphs captured over those tensors, keep pointing at that address. ``release()``
unmaps and frees the physical memory so training can use it (the contents are lost: a KV cache needs
none of them between rollouts); ``restore()`` maps fresh physical memory at the same address.

Touching a tensor of this storage while it is released is an illegal memory access that poisons the
CUDA context: the engine must not run while asleep.
"""

from __future__ import annotations

import torch

from picorl.units import GIB

try:
    from cuda.bindings import driver as _cu

    _HAS_BINDINGS = True
except ImportError:  # CPU installs, or the cuda-bindings package (pip install cuda-bindings) missing
    _HAS_BINDINGS = False



def vmm_available() -> bool:
    """True when a CUDA GPU and the ``cuda.bindings`` driver API are both present."""
    return _HAS_BINDINGS and torch.cuda.is_available()


class _CudaError(RuntimeError):
    pass


def _check(result):
    """Unpack a cuda.bindings ``(CUresult, *values)`` tuple, raising on any error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != _cu.CUresult.CUDA_SUCCESS:
        _, name = _cu.cuGetErrorName(err)
        raise _CudaError(
            f"CUDA driver error {name.decode() if isinstance(name, bytes) else name} ({int(err)})"
        )
    return values[0] if len(values) == 1 else tuple(values)


def _ensure_context(device_index: int) -> None:
    """Make torch's primary context current on this thread (torch creates it lazily)."""
    torch.zeros(1, device=f"cuda:{device_index}")  # forces context creation through torch
    ctx = _check(_cu.cuCtxGetCurrent())
    if ctx is None or int(ctx) == 0:
        dev = _check(_cu.cuDeviceGet(device_index))
        _check(_cu.cuCtxSetCurrent(_check(_cu.cuDevicePrimaryCtxRetain(dev))))


class _CudaArray:
    """The smallest object torch.as_tensor accepts as a zero-copy view of device memory."""

    def __init__(self, ptr: int, num_bytes: int, owner: object):
        self.owner = owner  # views keep the storage (and so its address range) alive
        self.__cuda_array_interface__ = {
            "shape": (num_bytes,),
            "typestr": "|u1",
            "data": (ptr, False),
            "version": 2,
        }


class VirtualKVStorage:
    """A fixed virtual address range of ``num_bytes`` whose physical memory can be released and restored.

    Sizes round up to the allocation granularity (2 MiB on current GPUs). Starts mapped.
    """

    def __init__(self, num_bytes: int, device: torch.device | str | int = "cuda"):
        if not vmm_available():
            raise RuntimeError(
                "VirtualKVStorage needs a CUDA GPU and the cuda-bindings package (pip install cuda-bindings)"
            )
        if num_bytes <= 0:
            raise ValueError(f"num_bytes must be positive, got {num_bytes}")
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"VirtualKVStorage lives on a CUDA device, got {device}")
        self.device = torch.device(
            "cuda", device.index if device.index is not None else torch.cuda.current_device()
        )
        _ensure_context(self.device.index)

        self._prop = _cu.CUmemAllocationProp()
        self._prop.type = _cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
        self._prop.location.type = _cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        self._prop.location.id = self.device.index
        granularity = _check(
            _cu.cuMemGetAllocationGranularity(
                self._prop, _cu.CUmemAllocationGranularity_flags.CU_MEM_ALLOC_GRANULARITY_RECOMMENDED
            )
        )
        self.num_bytes = -(-num_bytes // granularity) * granularity
        self._access = _cu.CUmemAccessDesc()
        self._access.location.type = _cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
        self._access.location.id = self.device.index
        self._access.flags = _cu.CUmemAccess_flags.CU_MEM_ACCESS_FLAGS_PROT_READWRITE

        self._ptr = _check(_cu.cuMemAddressReserve(self.num_bytes, granularity, 0, 0))
        self._handle = None
        self._closed = False
        self._bytes_view: torch.Tensor | None = None
        self.restore()
        self._bytes_view = torch.as_tensor(
            _CudaArray(self.data_ptr, self.num_bytes, self), device=self.device
        )

    @property
    def data_ptr(self) -> int:
        """The base virtual address: the same for the storage's whole life."""
        return int(self._ptr)

    @property
    def is_mapped(self) -> bool:
        return self._handle is not None

    def tensor(self, dtype: torch.dtype, shape: tuple[int, ...], offset_bytes: int = 0) -> torch.Tensor:
        """A contiguous tensor view of ``shape`` starting ``offset_bytes`` into the range (no copy)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        count = 1
        for size in shape:
            count *= size
        if offset_bytes % itemsize or offset_bytes < 0:
            raise ValueError(f"offset_bytes={offset_bytes} must be a non-negative multiple of {itemsize}")
        if offset_bytes + count * itemsize > self.num_bytes:
            raise ValueError(
                f"a {dtype} tensor of shape {tuple(shape)} at offset {offset_bytes} needs "
                f"{offset_bytes + count * itemsize} bytes; this storage has {self.num_bytes}"
            )
        raw = self._bytes_view[offset_bytes : offset_bytes + count * itemsize]
        return raw.view(dtype).view(shape)

    def release(self) -> None:
        """Return the physical memory to the GPU; the address range (and every view) stays reserved."""
        if self._handle is None:
            return
        torch.cuda.synchronize(self.device)  # kernels still reading the cache must finish first
        _check(_cu.cuMemUnmap(self._ptr, self.num_bytes))
        _check(_cu.cuMemRelease(self._handle))
        self._handle = None

    def restore(self) -> None:
        """Map fresh physical memory (uninitialized) at the same address. Frees torch's cached blocks
        and retries once if the GPU is out of memory; raises MemoryError naming the budget if still short."""
        if self._closed:
            raise RuntimeError("this VirtualKVStorage was closed")
        if self._handle is not None:
            return
        try:
            handle = _check(_cu.cuMemCreate(self.num_bytes, self._prop, 0))
        except _CudaError:
            torch.cuda.empty_cache()  # memory training freed but torch's allocator still caches
            try:
                handle = _check(_cu.cuMemCreate(self.num_bytes, self._prop, 0))
            except _CudaError as err:
                free, total = torch.cuda.mem_get_info(self.device)
                raise MemoryError(
                    f"cannot map the KV cache: it needs {self.num_bytes / GIB:.2f} GiB but only {free / GIB:.2f} "
                    f"of {total / GIB:.2f} GiB are free on {self.device} ({err}). Lower the KV-cache memory "
                    "budget, or free the training tensors still alive before waking the engine."
                ) from err
        try:
            _check(_cu.cuMemMap(self._ptr, self.num_bytes, 0, handle, 0))
            _check(_cu.cuMemSetAccess(self._ptr, self.num_bytes, [self._access], 1))
        except _CudaError:
            _cu.cuMemRelease(handle)
            raise
        self._handle = handle

    def close(self) -> None:
        """Release the memory and the address range. Views must not be used afterwards."""
        if self._closed:
            return
        self.release()
        self._bytes_view = None
        _check(_cu.cuMemAddressFree(self._ptr, self.num_bytes))
        self._closed = True

    def __del__(self):
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:  # interpreter shutdown: the driver may already be gone
            pass


class VMMKVStorage:
    """The engine's ``KVStorage`` (see ``kv_cache.py``) on CUDA virtual memory: ``keeps_address``, so
    decode graphs captured before ``sleep()`` replay correctly after ``wake_up()``."""

    keeps_address = True

    def __init__(self, device: torch.device) -> None:
        if not vmm_available():
            raise RuntimeError(
                "kv_storage='vmm' needs a CUDA GPU and cuda-bindings (pip install cuda-bindings)"
            )
        self.device = device
        self.storage: VirtualKVStorage | None = None
        self.buffer: torch.Tensor | None = None

    def allocate(self, num_bytes: int) -> torch.Tensor:
        self.storage = VirtualKVStorage(num_bytes, self.device)
        self.buffer = self.storage.tensor(torch.uint8, (num_bytes,))
        return self.buffer

    def release(self) -> None:
        self.storage.release()

    def restore(self) -> torch.Tensor:
        self.storage.restore()
        return self.buffer

    def close(self) -> None:
        if self.storage is not None:
            self.buffer = None
            self.storage.close()
            self.storage = None
