import pytest
import torch
from peft import LoraConfig, get_peft_model

from picorl.train import logprobs as lp_module
from picorl.train.logprobs import chosen_token_logprobs, hidden_token_logprobs, token_logprobs


def reference_logprobs(model, input_ids, attention_mask, temperature=1.0):
    """The slow reference: a full HF forward and a full-vocabulary log-softmax."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float() / temperature
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]
    return torch.nn.functional.pad(logp, (1, 0))


def test_chosen_token_logprobs_equal_hf_forward(llama, monkeypatch):
    torch.manual_seed(1)
    input_ids = torch.randint(0, 128, (3, 12))
    attention = torch.ones_like(input_ids)
    attention[2, 9:] = 0  # right padding
    positions = torch.zeros_like(input_ids, dtype=torch.bool)
    positions[:, 5:9] = True
    monkeypatch.setattr(lp_module, "CHUNK_POSITIONS", 5)  # force several chunks
    for temperature in (1.0, 0.7):
        got = chosen_token_logprobs(llama, input_ids, attention, positions, temperature)
        want = reference_logprobs(llama, input_ids, attention, temperature) * positions
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert (got[~positions] == 0).all()


def test_right_padded_rows_need_no_attention_mask(llama):
    """What the trainer passes (``attention_mask=None``, causal attention alone) gives, at every real
    token of right-padded rows, the log-probs of the masked HF forward; left padding would not."""
    torch.manual_seed(2)
    input_ids = torch.randint(0, 128, (3, 14))
    attention = torch.ones_like(input_ids)
    attention[1, 10:] = 0
    attention[2, 6:] = 0
    positions = attention.bool().clone()
    positions[:, :3] = False
    got = chosen_token_logprobs(llama, input_ids, None, positions)
    want = reference_logprobs(llama, input_ids, attention) * positions
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    left = torch.roll(input_ids, shifts=4, dims=1), torch.roll(attention, shifts=4, dims=1)
    left_positions = torch.roll(positions, shifts=4, dims=1)
    masked = chosen_token_logprobs(llama, left[0], left[1], left_positions)
    unmasked = chosen_token_logprobs(llama, left[0], None, left_positions)
    assert not torch.allclose(masked, unmasked, atol=1e-3), "left padding needs its mask"


def test_logprobs_through_peft_wrapper_use_the_adapter(llama):
    peft_model = get_peft_model(llama, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    input_ids = torch.randint(0, 128, (2, 10))
    attention = torch.ones_like(input_ids)
    positions = torch.ones_like(input_ids, dtype=torch.bool)
    positions[:, 0] = False
    got = chosen_token_logprobs(peft_model, input_ids, attention, positions)
    torch.testing.assert_close(got, reference_logprobs(peft_model, input_ids, attention) * positions)
    with peft_model.disable_adapter():
        base = chosen_token_logprobs(peft_model, input_ids, attention, positions)
    assert not torch.allclose(got, base), "a nonzero adapter must change the log-probs"


def test_logprobs_have_gradient_only_through_adapter(llama):
    peft_model = get_peft_model(llama, LoraConfig(r=4, target_modules="all-linear"))
    input_ids = torch.randint(0, 128, (2, 8))
    positions = torch.ones_like(input_ids, dtype=torch.bool)
    chosen_token_logprobs(peft_model, input_ids, torch.ones_like(input_ids), positions).sum().backward()
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert with_grad and all("lora_" in n for n in with_grad)


def _reference_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, ids[..., None])[..., 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logprobs_match_a_full_log_softmax(dtype):
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 7, 11)).to(dtype).requires_grad_(True)
    ids = torch.randint(0, 11, (3, 7))
    upstream = torch.randn(3, 7)
    out = token_logprobs(logits, ids, temperature=0.7, chunk_size=4)  # 21 positions: chunks 4+...+1
    assert out.dtype == torch.float32
    (grad,) = torch.autograd.grad((out * upstream).sum(), logits)
    expected = _reference_logprobs(logits, ids, 0.7)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), logits)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad.float(), expected_grad.float(), atol=tol, rtol=tol)


def _biggest_fp32_saved_for_backward(fn) -> int:
    """Largest fp32 tensor (in elements) that autograd keeps for backward while running ``fn``."""
    sizes = [0]

    def pack(x):
        if x.dtype == torch.float32:
            sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return max(sizes)


def test_chunked_logprobs_keep_no_vocabulary_sized_fp32_tensor_for_backward():
    n, h, v = 64, 16, 96
    logits = torch.randn(4, 16, v, dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(0, v, (4, 16))
    hidden = torch.randn(n, h, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.bfloat16, requires_grad=True)
    tokens = torch.randint(0, v, (n,))

    def plain_chunks():  # chunking under plain autograd: every chunk's fp32 logits stay saved
        for s in range(0, n, 8):
            _reference_logprobs(hidden[s : s + 8] @ weight.t(), tokens[s : s + 8], 1.0)

    # controls: the direct formula saves an [N, V] fp32 tensor; plain chunking saves chunk x V ones
    assert _biggest_fp32_saved_for_backward(lambda: _reference_logprobs(logits, ids, 1.0)) >= n * v
    assert _biggest_fp32_saved_for_backward(plain_chunks) >= 8 * v
    # the autograd functions keep only the [N] fp32 log-normalisers (bf16 inputs exist anyway)
    assert _biggest_fp32_saved_for_backward(lambda: token_logprobs(logits, ids, chunk_size=8)) == n
    assert (
        _biggest_fp32_saved_for_backward(lambda: hidden_token_logprobs(hidden, weight, tokens, 1.0, 8)) == n
    )


@pytest.mark.parametrize("weight_grad", [True, False])
def test_hidden_token_logprobs_match_head_then_log_softmax(weight_grad):
    torch.manual_seed(1)
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(13, 8, requires_grad=weight_grad)
    tokens = torch.randint(0, 13, (10,))
    upstream = torch.randn(10)
    out = hidden_token_logprobs(hidden, weight, tokens, temperature=1.3, chunk_size=3)
    expected = torch.log_softmax(hidden @ weight.t() / 1.3, -1).gather(-1, tokens[:, None])[:, 0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    inputs = (hidden, weight) if weight_grad else (hidden,)
    grads = torch.autograd.grad((out * upstream).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), inputs)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_hidden_token_logprobs_on_gpu_match_and_use_less_memory():
    torch.manual_seed(0)
    n, h, v = 4096, 512, 32000
    hidden = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (0.05 * torch.randn(v, h, device="cuda", dtype=torch.bfloat16)).requires_grad_(False)
    tokens = torch.randint(0, v, (n,), device="cuda")

    def peak_bytes(fn) -> tuple[torch.Tensor, torch.Tensor, int]:
        hidden.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        out.sum().backward()
        torch.cuda.synchronize()
        return out.detach(), hidden.grad.clone(), torch.cuda.max_memory_allocated() - base

    fused, fused_grad, fused_peak = peak_bytes(
        lambda: hidden_token_logprobs(hidden, weight, tokens, 0.8, 1024)
    )
    ref, ref_grad, ref_peak = peak_bytes(lambda: _reference_logprobs(hidden @ weight.t(), tokens, 0.8))
    # bf16 logits of a chunked matmul may round differently in the last bit (~4e-3 at |logit| ~ 1)
    torch.testing.assert_close(fused, ref, atol=2e-2, rtol=0)
    torch.testing.assert_close(fused_grad.float(), ref_grad.float(), atol=2e-2, rtol=2e-2)
    assert fused_peak < ref_peak / 2, (fused_peak, ref_peak)
