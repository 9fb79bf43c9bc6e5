"""Adapter folders that are wrong in every way a kill, a full disk or a hand edit can make them: each
error names the file and the fix, and an adapter is refused on a base it was not trained on."""

import json
import shutil

import pytest
import torch

from picorl.config import ModelConfig
from picorl.models import load_model_and_tokenizer
from picorl.models.adapter import AdapterError, load_adapter
from picorl.models.identity import base_model_record, same_base
from picorl.train.checkpoint import save_adapter
from picorl.train.policy import make_policy


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A LoRA adapter on tiny-qwen3, saved as the trainer saves it."""
    model, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    base = base_model_record(model, "tiny-qwen3")
    policy = make_policy(model, ModelConfig(lora_rank=4, lora_alpha=8))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()
    folder = tmp_path_factory.mktemp("saved") / "adapter"
    save_adapter(policy, tokenizer, folder, base)
    return folder


@pytest.fixture
def adapter(saved, tmp_path):
    copy = tmp_path / "adapter"
    shutil.copytree(saved, copy)
    return copy


def base(name="tiny-qwen3"):
    return load_model_and_tokenizer(name)[0]


def test_the_adapter_names_its_base_and_loads_on_it(adapter):
    assert (
        json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-qwen3"
    )
    model = load_adapter(base(), adapter, "tiny-qwen3")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_another_base_is_refused_naming_the_right_one(adapter):
    with pytest.raises(AdapterError, match="trained on 'tiny-qwen3'.*pass --model tiny-qwen3"):
        load_adapter(base("tiny-llama"), adapter, "tiny-llama")


def test_without_picorl_record_the_config_name_is_checked(adapter):
    (adapter / "base_model.json").unlink()
    with pytest.raises(AdapterError, match="trained on 'tiny-qwen3' \\(adapter_config.json\\)"):
        load_adapter(base("tiny-llama"), adapter, "tiny-llama")


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda a: (a / "adapter_model.safetensors").write_bytes(
                (a / "adapter_model.safetensors").read_bytes()[:500]
            ),
            "adapter_model.safetensors is damaged",
        ),
        (lambda a: (a / "adapter_model.safetensors").unlink(), "has no adapter_model.safetensors"),
        (
            lambda a: (a / "adapter_config.json").write_text("{not json"),
            "adapter_config.json is not valid JSON",
        ),
        (lambda a: (a / "adapter_config.json").unlink(), "is not a PEFT adapter folder"),
        (lambda a: shutil.rmtree(a), "does not exist"),
    ],
    ids=["truncated-weights", "no-weights", "bad-json", "no-config", "no-folder"],
)
def test_damaged_folders_name_the_file_and_the_fix(adapter, damage, message):
    damage(adapter)
    with pytest.raises(AdapterError, match=message) as error:
        load_adapter(base(), adapter, "tiny-qwen3")
    assert str(adapter) in str(error.value)


def test_shapes_that_do_not_fit_give_one_line_not_a_traceback(adapter):
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = 2  # the weights are rank 4
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match="does not fit 'tiny-qwen3'") as error:
        load_adapter(base(), adapter, "tiny-qwen3")
    assert len(str(error.value).splitlines()) == 1


def test_fingerprint_tells_weights_apart_but_not_dtypes():
    model = base("tiny-llama")
    record = base_model_record(model, "a")
    assert same_base(record, base_model_record(base("tiny-llama").to(torch.bfloat16), "b"))
    other = base("tiny-llama")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * p.std().clamp(min=1e-3))
    assert not same_base(record, base_model_record(other, "a"))
    assert not same_base(record, base_model_record(base("tiny-qwen3"), "a"))
