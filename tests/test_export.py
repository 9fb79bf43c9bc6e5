"""``picorl export --merged``: a plain transformers folder whose logits match the adapter model's."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from picorl.cli import main
from picorl.config import build_config, dump_toml
from picorl.export import chat_stop_token_ids
from picorl.models import load_model_and_tokenizer
from picorl.train.checkpoint import save_adapter
from picorl.train.policy import make_policy


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with a LoRA adapter whose B matrices are random (a fresh adapter merges to nothing)."""
    run = tmp_path_factory.mktemp("runs") / "exp"
    run.mkdir()
    config = build_config({"model": {"model": "tiny-qwen3", "lora_rank": 4}})
    (run / "config.toml").write_text(dump_toml(config))
    model, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    policy = make_policy(model, config.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    save_adapter(policy, tokenizer, run / "adapter")
    return run


def adapter_logits(run_dir, ids):
    base, _ = load_model_and_tokenizer("tiny-qwen3")
    model = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    with torch.no_grad():
        return model(ids).logits


def test_merged_fp32_matches_the_adapter_model(run_dir, tmp_path):
    out = tmp_path / "merged"
    assert main(["export", str(run_dir), "--merged", str(out), "--dtype", "fp32"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not any("lora" in k for k in load_file(out / "model.safetensors")), "adapter not merged"
    model = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no PEFT
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not isinstance(model, PeftModel) and model.config.use_cache
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "How many rs are in strawberry?"}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    expected = adapter_logits(run_dir, ids)
    base, _ = load_model_and_tokenizer("tiny-qwen3")
    with torch.no_grad():
        got, unadapted = model(ids).logits, base(ids).logits
    assert (expected - unadapted).abs().max() > 1e-2, "the adapter must change the logits for this test to mean anything"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_bf16_export_and_generation_config_stops_at_end_of_turn(run_dir, tmp_path):
    out = tmp_path / "merged-bf16"
    assert main(["export", str(run_dir), "--merged", str(out)]) == 0  # default: bf16 (the run's dtype was auto)
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert model.dtype == torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(out)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")  # the ChatML template's turn end
    assert chat_stop_token_ids(tokenizer) == [end_of_turn]
    eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    assert end_of_turn in (eos if isinstance(eos, list) else [eos])
    assert tokenizer.chat_template


def test_export_errors_are_clear(run_dir, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--merged", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["export", str(run_dir), "--merged", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
