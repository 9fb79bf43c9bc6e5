"""KV-cache storage on CUDA virtual memory: release frees the GPU memory, restore keeps the address."""

import pytest
import torch

from picorl.engine.memory.vmm import VirtualKVStorage, VMMKVStorage, vmm_available
from picorl.units import GIB


def gpu(test):
    """GPU-only test: marked `gpu`, and skipped visibly where CUDA or cuda.bindings is missing."""
    return pytest.mark.gpu(
        pytest.mark.skipif(not vmm_available(), reason="needs a CUDA GPU and cuda-bindings")(test)
    )


def free_bytes() -> int:
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


@gpu
def test_views_read_back_what_was_written_and_share_memory():
    store = VirtualKVStorage(64 << 20, "cuda")
    assert store.is_mapped and store.num_bytes >= 64 << 20
    data = torch.randn(1000, 16, device="cuda")
    view = store.tensor(torch.float32, (1000, 16))
    view.copy_(data)
    assert torch.equal(view, data)
    as_bf16 = store.tensor(torch.bfloat16, (2, 500, 16), offset_bytes=view.numel() * 4)
    as_bf16.fill_(1.5)
    assert torch.equal(view, data)  # the second view sits after the first, no overlap
    alias = store.tensor(torch.float32, (16,), offset_bytes=16 * 4)
    assert torch.equal(alias, data[1])  # same bytes seen through another view
    assert view.data_ptr() == store.data_ptr
    with pytest.raises(ValueError, match="needs"):
        store.tensor(torch.float32, (store.num_bytes // 4 + 1,))
    store.close()


@gpu
def test_release_returns_memory_and_restore_keeps_the_address():
    size = min(4 * GIB, free_bytes() // 4)
    before = free_bytes()
    store = VirtualKVStorage(size, "cuda")
    view = store.tensor(torch.uint8, (size,))
    mapped = free_bytes()
    assert before - mapped >= 0.95 * size
    ptr = store.data_ptr

    store.release()
    assert not store.is_mapped
    assert free_bytes() - mapped >= 0.95 * size  # the physical memory is back with the GPU

    store.restore()
    assert store.is_mapped and store.data_ptr == ptr and view.data_ptr() == ptr
    assert mapped - free_bytes() < 0.05 * size + (64 << 20)  # same footprint as before
    view[-(1 << 20) :].fill_(7)  # the new mapping covers the whole range
    assert int(view[-(1 << 20) :].sum()) == 7 << 20
    store.close()


@gpu
def test_graph_captured_before_release_replays_after_restore():
    store = VirtualKVStorage(32 << 20, "cuda")
    cache = store.tensor(torch.float32, (1024, 256))
    cache.copy_(torch.randn_like(cache))
    read = torch.empty_like(cache)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        read.copy_(cache * 3)  # reads the cache
        cache.add_(1)  # and writes it

    store.release()
    store.restore()
    values = torch.randn(1024, 256, device="cuda")
    cache.copy_(values)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.allclose(read, values * 3)
    assert torch.allclose(cache, values + 1)
    store.close()


@gpu
def test_training_can_use_released_memory_and_restore_then_succeeds():
    """Training fills the memory the cache gave back; restore frees torch's cache and retries."""
    total_free = free_bytes()
    size = min(16 * GIB, int(0.4 * total_free))
    store = VirtualKVStorage(size, "cuda")
    ptr = store.data_ptr
    store.release()
    # a 'training step' that needs half the cache's memory: impossible had the cache stayed mapped
    activations = torch.empty(total_free - size // 2, dtype=torch.uint8, device="cuda")
    activations.fill_(1)
    del activations  # freed, but torch's allocator keeps it cached: restore must empty that cache
    assert free_bytes() < store.num_bytes
    store.restore()
    assert store.is_mapped and store.data_ptr == ptr
    store.tensor(torch.float32, (1 << 20,)).fill_(2.0)
    torch.cuda.synchronize()
    store.close()


@gpu
def test_restore_without_room_names_the_budget():
    total_free = free_bytes()
    size = min(8 * GIB, int(0.4 * total_free))
    store = VirtualKVStorage(size, "cuda")
    store.release()
    held = torch.empty(total_free - size // 2, dtype=torch.uint8, device="cuda")  # still alive
    with pytest.raises(MemoryError, match="GiB"):
        store.restore()
    assert not store.is_mapped
    del held
    store.restore()
    assert store.is_mapped
    store.close()


@gpu
def test_engine_storage_interface_keeps_its_buffer_address():
    storage = VMMKVStorage(torch.device("cuda"))
    assert storage.keeps_address
    buffer = storage.allocate(10 << 20)
    assert buffer.dtype == torch.uint8 and buffer.numel() == 10 << 20
    before = free_bytes()
    storage.release()
    assert free_bytes() - before >= 10 << 20
    again = storage.restore()
    assert again.data_ptr() == buffer.data_ptr()
    again.fill_(3)
    assert int(buffer[-1]) == 3
    storage.close()


def test_unavailable_without_cuda_is_reported_clearly():
    """Runs everywhere: without a GPU or cuda.bindings the module imports and says why it can't run."""
    if vmm_available():
        pytest.skip("cuda-bindings and a GPU are present; covered by the gpu tests")
    with pytest.raises(RuntimeError, match="cuda-bindings"):
        VirtualKVStorage(1 << 20, "cuda")
    with pytest.raises(RuntimeError, match="cuda-bindings"):
        VMMKVStorage(torch.device("cuda"))
