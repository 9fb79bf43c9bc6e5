import torch
from peft import LoraConfig, get_peft_model

from picorl.train import logprobs as lp_module
from picorl.train.logprobs import chosen_token_logprobs


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
