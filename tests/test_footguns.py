"""The war journal's footguns, each shown impossible (or caught) by a test.

1 (OOM at wake-up) needs a GPU: tests/engine/test_vmm.py and tests/engine/test_engine_gpu.py.
3 and 4 (reward design) live in tests/envs/test_rewards.py; 8 (RL can't invent counting) is what the
SFT warm-up answers (tests/train/test_sft.py).
"""

import pickle

import torch
from peft import LoraConfig, get_peft_model

from picorl.config import Config
from picorl.engine import EngineConfig, LLMEngine
from picorl.engine.types import SamplingParams
from picorl.eval.evaluate import tier_metrics
from picorl.models import load_model_and_tokenizer
from picorl.rollout.episodes import Episode
from picorl.train.logprobs import chosen_token_logprobs
from picorl.train.update import UpdateContext, _reference_logprobs

PROMPTS = [[5, 9, 12, 7], [3, 3, 8]]


def hf_greedy(model, prompt, n):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None)
    return out[0, len(prompt) :].tolist()


def test_footgun2_engine_built_before_peft_still_runs_the_adapter():
    """PEFT renames parameters; the engine binds nothing by name, so wrapping order does not matter."""
    model, _ = load_model_and_tokenizer("tiny-llama")
    engine = LLMEngine(model, None, EngineConfig(num_blocks=32))  # built first, as the seed had to avoid
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    got = [group[0].token_ids for group in engine.generate(PROMPTS, greedy)]
    assert got == [hf_greedy(peft_model, p, 6) for p in PROMPTS]
    with peft_model.disable_adapter():
        base = [hf_greedy(peft_model, p, 6) for p in PROMPTS]
    assert got != base, "the adapter must change greedy output for this check to mean anything"


def test_footgun7_rollouts_never_serialize_weights(monkeypatch):
    """The seed hit msgspec's 4 GB limit shipping weights to vLLM's worker. The engine runs in the
    trainer's process on the trainer's tensors: nothing is pickled, saved or sent anywhere."""
    model, _ = load_model_and_tokenizer("tiny-qwen3")

    def forbidden(*args, **kwargs):
        raise AssertionError("serialization during a rollout")

    monkeypatch.setattr(pickle, "dumps", forbidden)
    monkeypatch.setattr(torch, "save", forbidden)
    monkeypatch.setattr(torch.multiprocessing, "Process", forbidden)
    engine = LLMEngine(model, None, EngineConfig(num_blocks=32))
    out = engine.generate(PROMPTS, SamplingParams(max_tokens=4, temperature=1.0, seed=0), n=2)
    assert [len(c.token_ids) for group in out for c in group] and engine.last_stats["tokens"] > 0


def test_footgun5_accuracy_counts_exact_matches_only():
    """Partial credit (0.1 for a formatted wrong answer) must never count as correct."""
    episodes = [Episode(0, i, [1], reward=0.1, info={"correct": False, "format_ok": True}) for i in range(9)]
    episodes.append(Episode(0, 9, [1], reward=1.0, info={"correct": True, "format_ok": True}))
    m = tier_metrics(6, episodes)
    assert m["eval/tier6/accuracy"] == 0.1 and m["eval/tier6/format_compliance"] == 1.0


def test_kl_reference_is_the_model_without_adapter_and_zero_at_start():
    """beta > 0 uses the base model (adapter disabled) as reference: no second copy of the weights,
    and a fresh adapter (B = 0) gives exactly zero KL."""
    model, _ = load_model_and_tokenizer("tiny-qwen3")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    ids = torch.tensor([[5, 9, 12, 7, 40, 41, 42]])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 4:] = True

    class Batch:
        input_ids, attention_mask, action_mask = ids, torch.ones_like(ids), mask

    ctx = UpdateContext(
        config=Config(), model=peft_model, tokenizer=None, engine=None, make_env=None, optimizer=None,
        lr_scheduler=None, device=torch.device("cpu"),
    )  # fmt: skip
    policy = chosen_token_logprobs(peft_model, ids, torch.ones_like(ids), mask)
    assert torch.equal(_reference_logprobs(ctx, Batch), policy)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    assert not torch.allclose(
        _reference_logprobs(ctx, Batch), chosen_token_logprobs(peft_model, ids, torch.ones_like(ids), mask)
    )
