"""Fixtures for the engine tests: tiny random models (Llama, Qwen2, Qwen3), a byte-level tokenizer,
and transformers references (greedy generate, forward-pass log-probs).

Helpers are handed out as session fixtures (pytest runs with --import-mode=importlib, so test
modules cannot import this file)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from picorl.models.tiny import TINY_SHAPE

EOS = 256  # the byte tokenizer's only special token; ids 0-255 are raw bytes
VOCAB = 257  # every id decodes
ARCHITECTURES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}


def tiny_model(arch: str = "qwen3", seed: int = 0, **overrides) -> torch.nn.Module:
    """A 2-layer fp32 model with 4 query heads sharing 2 KV heads; weights drawn wide enough that
    greedy choices are not decided by float rounding."""
    config_cls, model_cls = ARCHITECTURES[arch]
    kwargs = dict(
        vocab_size=VOCAB,
        **TINY_SHAPE,
        max_position_embeddings=512,
        initializer_range=0.2,
        eos_token_id=EOS,
        bos_token_id=None,
        pad_token_id=EOS,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).float()
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = EOS
    return model.eval()


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the rest move past 255."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in printable else next(extra)) for b in range(256)}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer without merges: token id = byte value, plus <eos> = 256."""
    chars = _byte_chars()
    vocab = {chars[b]: b for b in range(256)} | {"<eos>": EOS}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def random_prompts(lengths: list[int], seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy decoding of one prompt (no padding), new tokens only."""
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt], device=device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=EOS,
            pad_token_id=EOS,
        )
    return out[0, len(prompt) :].tolist()


def hf_logprobs(model, prompt: list[int], completion: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / T) of each completion token under one full forward pass of the model."""
    ids = torch.tensor([prompt + completion], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float().cpu() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return byte_tokenizer()


@pytest.fixture(scope="session", name="tiny_model")
def tiny_model_fixture():
    return tiny_model


@pytest.fixture(scope="session", name="random_prompts")
def random_prompts_fixture():
    return random_prompts


@pytest.fixture(scope="session", name="hf_greedy")
def hf_greedy_fixture():
    return hf_greedy


@pytest.fixture(scope="session", name="hf_logprobs")
def hf_logprobs_fixture():
    return hf_logprobs
