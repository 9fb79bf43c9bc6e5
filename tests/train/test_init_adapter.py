import pytest
import torch

from picorl.config import ModelConfig
from picorl.models import load_model_and_tokenizer
from picorl.train.policy import make_policy, trainable_parameters


def test_policy_starts_from_a_saved_adapter_and_trains_it(tmp_path):
    model, _ = load_model_and_tokenizer("tiny-qwen3")
    first = make_policy(model, ModelConfig(lora_rank=4, gradient_checkpointing=False))
    with torch.no_grad():
        for p in trainable_parameters(first):
            p.add_(torch.randn_like(p))
    first.save_pretrained(tmp_path / "adapter")
    saved = {n: p.detach().clone() for n, p in first.named_parameters() if p.requires_grad}

    model, _ = load_model_and_tokenizer("tiny-qwen3")
    second = make_policy(model, ModelConfig(init_adapter=str(tmp_path / "adapter"), gradient_checkpointing=False))
    loaded = {n: p for n, p in second.named_parameters() if p.requires_grad}
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[n], saved[n]) for n in saved)


def test_init_adapter_must_be_an_adapter_folder(tmp_path):
    model, _ = load_model_and_tokenizer("tiny-qwen3")
    with pytest.raises(ValueError, match="no adapter_config.json"):
        make_policy(model, ModelConfig(init_adapter=str(tmp_path)))
