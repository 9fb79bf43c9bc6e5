"""The trained weights can be copied and swapped in place for a while (the KL penalty's start reference)."""

import pytest
import torch

from picorl.config import ModelConfig
from picorl.models import load_model_and_tokenizer
from picorl.train.policy import make_policy, trained_weights_copy, weights_swapped


def lora_policy():
    model, _ = load_model_and_tokenizer("tiny-qwen3")
    return make_policy(model, ModelConfig(lora_rank=4))


def test_copy_holds_the_trained_weights_only_and_does_not_follow_them():
    policy = lora_policy()
    copy = trained_weights_copy(policy)
    trained = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert set(copy) == trained and all("lora_" in n for n in copy)
    name = next(iter(copy))
    with torch.no_grad():
        dict(policy.named_parameters())[name].add_(1.0)
    assert not torch.equal(copy[name], dict(policy.named_parameters())[name])


def test_swapped_weights_are_in_place_and_restored_even_after_an_error():
    policy = lora_policy()
    params = dict(policy.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    storage = {n: p.data_ptr() for n, p in params.items()}
    other = {n: torch.full_like(p, 0.5) for n, p in params.items() if "lora_B" in n}
    with weights_swapped(policy, other):
        for n, value in other.items():
            assert torch.equal(params[n], value)
    with pytest.raises(RuntimeError, match="inside"), weights_swapped(policy, other):
        raise RuntimeError("inside")
    for n, p in policy.named_parameters():
        assert torch.equal(p, before[n]) and p.data_ptr() == storage[n], n


def test_weights_for_a_parameter_the_model_lacks_are_refused():
    policy = lora_policy()
    with pytest.raises(ValueError, match="lacks"), weights_swapped(policy, {"no.such.weight": torch.zeros(1)}):
        pass
