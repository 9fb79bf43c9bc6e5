"""Triton paged decode attention against a slow gather + softmax reference in float64 (GPU only)."""

import math

import pytest
import torch

from picorl.engine.layers.triton_decode import paged_decode_attention, triton_available


def gpu(test):
    """GPU-only test: marked `gpu`, and skipped visibly where CUDA or Triton is missing."""
    return pytest.mark.gpu(
        pytest.mark.skipif(not triton_available(), reason="needs a CUDA GPU and Triton")(test)
    )


# ||out - ref|| / ||ref||: fp32 runs exact-precision dots; bf16 rounds the probabilities and the output.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def reference_decode(q, k_cache, v_cache, block_tables, context_lens, scale):
    """Gather each sequence's pages into a dense K/V, then plain softmax attention in float64."""
    batch, num_heads, head_dim = q.shape
    page, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros(batch, num_heads, head_dim, dtype=torch.float64, device=q.device)
    for b in range(batch):
        n = int(context_lens[b])
        if n == 0:
            continue
        pages = block_tables[b, : math.ceil(n / page)].long()
        k = k_cache[pages].reshape(-1, num_kv_heads, head_dim)[:n].double()
        v = v_cache[pages].reshape(-1, num_kv_heads, head_dim)[:n].double()
        k = k.repeat_interleave(num_heads // num_kv_heads, dim=1)  # query head h reads KV head h // group
        v = v.repeat_interleave(num_heads // num_kv_heads, dim=1)
        probs = (torch.einsum("hd,nhd->hn", q[b].double(), k) * scale).softmax(dim=-1)
        out[b] = torch.einsum("hn,nhd->hd", probs, v)
    return out


def make_inputs(lens, num_heads, num_kv_heads, head_dim, dtype, page=16, spare_blocks=3, gen=None):
    """Random q and a shuffled page pool; unused table entries point at random (garbage) pages."""
    device = "cuda"
    max_blocks = max(math.ceil(n / page) for n in lens) + spare_blocks
    num_blocks = sum(math.ceil(n / page) for n in lens) + 8
    q = torch.randn(len(lens), num_heads, head_dim, device=device, dtype=dtype, generator=gen)
    k_cache = torch.randn(num_blocks, page, num_kv_heads, head_dim, device=device, dtype=dtype, generator=gen)
    v_cache = torch.randn(num_blocks, page, num_kv_heads, head_dim, device=device, dtype=dtype, generator=gen)
    order = torch.randperm(num_blocks, device=device, generator=gen)
    tables = torch.randint(0, num_blocks, (len(lens), max_blocks), device=device, generator=gen)
    used = 0
    for b, n in enumerate(lens):
        need = math.ceil(n / page)
        tables[b, :need] = order[used : used + need]
        used += need
    lens_t = torch.tensor(lens, device=device, dtype=torch.int32)
    return q, k_cache, v_cache, tables.to(torch.int32), lens_t


def rel_error(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def run_and_check(lens, num_heads, num_kv_heads, head_dim, dtype, page=16, num_splits=None):
    gen = torch.Generator(device="cuda").manual_seed(hash((tuple(lens), num_heads, head_dim, page)) % 2**31)
    q, k, v, tables, lens_t = make_inputs(lens, num_heads, num_kv_heads, head_dim, dtype, page, gen=gen)
    scale = head_dim**-0.5
    out = torch.full_like(q, float("nan"))  # every element must be written
    paged_decode_attention(q, k, v, tables, lens_t, scale, out=out, num_splits=num_splits)
    ref = reference_decode(q, k, v, tables, lens_t, scale)
    assert torch.isfinite(out).all()
    err = rel_error(out, ref)
    assert err < TOLERANCE[dtype], f"relative error {err:.2e}"


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(8, 8), (32, 8), (16, 2), (12, 4)])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_matches_reference_across_gqa_dtypes_head_dims(dtype, num_heads, num_kv_heads, head_dim):
    # lengths: 1, below a page, exact pages, ragged, longer than one tile
    run_and_check([1, 7, 16, 33, 64, 200, 517], num_heads, num_kv_heads, head_dim, dtype)


@gpu
@pytest.mark.parametrize("num_splits", [1, 2, 5, None])
@pytest.mark.parametrize("lens", [[4096], [1, 4095, 2048], [3000] * 4])
def test_long_contexts_with_and_without_split_k(lens, num_splits):
    run_and_check(lens, 32, 8, 128, torch.bfloat16, num_splits=num_splits)


@gpu
def test_more_splits_than_tiles_leaves_empty_splits_harmless():
    run_and_check([1, 5, 70], 32, 8, 128, torch.float32, num_splits=16)


@gpu
@pytest.mark.parametrize("page", [8, 32, 128])
def test_other_page_sizes(page):
    run_and_check([1, 9, 130, 700], 32, 8, 128, torch.bfloat16, page=page)


@gpu
@pytest.mark.parametrize("batch", [64, 256])
def test_large_batches_of_ragged_lengths(batch):
    lens = torch.randint(1, 1100, (batch,)).tolist()
    run_and_check(lens, 32, 8, 128, torch.bfloat16)


@gpu
@pytest.mark.parametrize("num_splits", [1, 4])
def test_zero_length_rows_give_zeros(num_splits):
    q, k, v, tables, lens = make_inputs([5, 40, 300], 16, 4, 64, torch.float32)
    lens[1] = 0  # a CUDA-graph padding row
    out = paged_decode_attention(q, k, v, tables, lens, 0.125, num_splits=num_splits)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    ref = reference_decode(q, k, v, tables, lens, 0.125)
    assert rel_error(out, ref) < 1e-5


@gpu
def test_cuda_graph_replay_follows_new_inputs():
    """Capture once, then change q, tables and lengths in place: each replay equals a fresh reference."""
    lens = [100, 1, 1500, 37] * 4
    q, k, v, tables, lens_t = make_inputs(lens, 32, 8, 128, torch.bfloat16, spare_blocks=40)
    out = torch.empty_like(q)
    paged_decode_attention(q, k, v, tables, lens_t, 0.088, out=out)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        paged_decode_attention(q, k, v, tables, lens_t, 0.088, out=out)
    for _ in range(3):
        new_q, new_k, new_v, new_tables, new_lens = make_inputs(
            lens, 32, 8, 128, torch.bfloat16, spare_blocks=40
        )
        q.copy_(new_q)
        k.copy_(new_k)
        v.copy_(new_v)
        tables.copy_(new_tables)
        lens_t.copy_(new_lens[torch.randperm(len(lens), device="cuda")])  # rows get other lengths
        out.fill_(float("nan"))
        graph.replay()
        ref = reference_decode(q, k, v, tables, lens_t, 0.088)
        assert rel_error(out, ref) < TOLERANCE[torch.bfloat16]


@gpu
def test_strided_views_of_a_shared_kv_tensor():
    """K and V as views of one [2, blocks, page, H_kv, D] tensor, q a slice of a wider qkv buffer."""
    q, k, v, tables, lens = make_inputs([50, 333], 32, 8, 128, torch.bfloat16)
    kv = torch.stack([k, v])
    qkv = torch.cat([q, torch.randn_like(q)], dim=1)
    out = paged_decode_attention(qkv[:, :32], kv[0], kv[1], tables, lens, 0.1)
    assert rel_error(out, reference_decode(q, k, v, tables, lens, 0.1)) < TOLERANCE[torch.bfloat16]


@gpu
def test_bad_inputs_raise_clear_errors():
    q, k, v, tables, lens = make_inputs([5], 12, 4, 64, torch.float32)
    with pytest.raises(TypeError, match="int32"):
        paged_decode_attention(q, k, v, tables.long(), lens, 1.0)
    with pytest.raises(TypeError, match="share one of"):
        paged_decode_attention(q.half(), k, v, tables, lens, 1.0)
    with pytest.raises(ValueError, match="multiple of H_kv"):
        paged_decode_attention(q[:, :10], k, v, tables, lens, 1.0)


def test_cpu_tensors_are_refused_with_a_pointer_to_the_torch_path():
    """Runs everywhere: the module imports without Triton/CUDA and refuses CPU inputs clearly."""
    q = torch.randn(2, 4, 64)
    cache = torch.randn(3, 16, 2, 64)
    tables = torch.zeros(2, 3, dtype=torch.int32)
    lens = torch.tensor([3, 5], dtype=torch.int32)
    with pytest.raises((RuntimeError, ValueError), match="torch attention"):
        paged_decode_attention(q, cache, cache, tables, lens, 0.125)


def last_slots(tables: torch.Tensor, lens: torch.Tensor, page: int) -> torch.Tensor:
    """Flat cache slot of each row's last token (a padding row of length 0 gets slot 0, unused)."""
    last = (lens.long() - 1).clamp(min=0)
    return tables.long().gather(1, (last // page)[:, None])[:, 0] * page + last % page


def check_new_kv(lens, num_splits=None, dtype=torch.bfloat16, num_heads=32, num_kv_heads=8, head_dim=128):
    """The kernel storing the new token's K/V itself == store_kv, then attention without new_kv."""
    from picorl.engine.layers.attention import store_kv

    gen = torch.Generator(device="cuda").manual_seed(len(lens) * 7 + (num_splits or 0))
    q, k, v, tables, lens_t = make_inputs(lens, num_heads, num_kv_heads, head_dim, dtype, gen=gen)
    k_new = torch.randn(len(lens), num_kv_heads, head_dim, device="cuda", dtype=dtype, generator=gen)
    qkv_new = torch.randn(len(lens), 2, num_kv_heads, head_dim, device="cuda", dtype=dtype, generator=gen)
    v_new = qkv_new[:, 1]  # a strided view, as a slice of a fused projection output would be
    slots = last_slots(tables, lens_t, k.shape[1])
    live = lens_t > 0
    k_ref, v_ref = k.clone(), v.clone()
    store_kv(k_ref, v_ref, k_new[live], v_new[live], slots[live])
    ref = reference_decode(q, k_ref, v_ref, tables, lens_t, 0.09)
    out = torch.full_like(q, float("nan"))
    paged_decode_attention(
        q, k, v, tables, lens_t, 0.09, new_kv=(k_new, v_new, slots), out=out, num_splits=num_splits
    )
    assert torch.equal(k, k_ref) and torch.equal(v, v_ref), (
        "the kernel wrote the new K/V exactly where store_kv does"
    )
    assert torch.isfinite(out).all()
    assert rel_error(out, ref) < TOLERANCE[dtype]
    plain = paged_decode_attention(q, k_ref, v_ref, tables, lens_t, 0.09, num_splits=num_splits)
    assert rel_error(out, plain.double()) < TOLERANCE[dtype] / 4  # same rounding up to summation order


@gpu
@pytest.mark.parametrize("num_splits", [1, 3, None])
def test_new_kv_is_stored_and_attended_like_store_then_attend(num_splits):
    # length 1 (only the new token), page and tile edges, long
    check_new_kv([1, 2, 16, 17, 64, 65, 1000, 2049], num_splits=num_splits)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_new_kv_in_other_dtypes_and_gqa(dtype):
    check_new_kv([1, 30, 300], dtype=dtype, num_heads=12, num_kv_heads=4, head_dim=64)


@gpu
def test_new_kv_skips_padding_rows_and_more_splits_than_tiles():
    check_new_kv([0, 5, 0, 70], num_splits=16)


@gpu
def test_new_kv_bad_shapes_raise_clear_errors():
    q, k, v, tables, lens = make_inputs([5, 9], 12, 4, 64, torch.float32)
    k_new = torch.randn(2, 4, 64, device="cuda")
    slots = last_slots(tables, lens, 16)
    with pytest.raises(ValueError, match=r"new_kv: k and v must be \[B, H_kv, D\]"):
        paged_decode_attention(q, k, v, tables, lens, 1.0, new_kv=(k_new[:, :2], k_new, slots))
    with pytest.raises(ValueError, match="slots must be int64"):
        paged_decode_attention(q, k, v, tables, lens, 1.0, new_kv=(k_new, k_new, slots.int()))
