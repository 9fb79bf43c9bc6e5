"""The war journal's footguns, each shown impossible (or caught) by a test.

1 (OOM at wake-up) needs a GPU: tests/engine/test_vmm.py and tests/engine/test_engine_gpu.py.
3 and 4 (reward design) live in tests/envs/test_rewards.py; 8 (RL can't invent counting) is what the
SFT warm-up answers (tests/train/test_sft.py).
"""

import pickle

import torch
from peft import LoraConfig, get_peft_model

from picorl.algos.config import AlgoConfig
from picorl.config import Config
from picorl.engine import EngineConfig, LLMEngine
from picorl.engine.types import SamplingParams
from picorl.eval.evaluate import tier_metrics
from picorl.models import load_model_and_tokenizer
from picorl.rollout.episodes import Episode
from picorl.train.batch import MicroBatch
from picorl.train.logprobs import chosen_token_logprobs
from picorl.train.policy import trained_weights_copy
from picorl.train.update import UpdateContext, reference_logprobs

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


def test_kl_reference_is_the_policy_rl_started_from_or_the_base_model():
    """beta > 0: with kl_reference = start the reference is the policy as RL found it (after SFT it is
    the SFT policy, not the base model that cannot count), with base it is the adapter switched off.
    Neither holds a second model, and the policy's own weights are untouched by computing it."""
    model, _ = load_model_and_tokenizer("tiny-qwen3")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    ids = torch.tensor([[5, 9, 12, 7, 40, 41, 42]])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 4:] = True
    batch = MicroBatch(
        [0], ids, mask, torch.zeros(ids.shape), torch.zeros(1), mask.sum(-1)
    )

    def policy() -> torch.Tensor:
        return chosen_token_logprobs(peft_model, ids, None, mask)

    def context(kl_reference: str) -> UpdateContext:
        return UpdateContext(
            config=Config(algo=AlgoConfig(beta=0.1, kl_reference=kl_reference)), model=peft_model, tokenizer=None,
            engine=None, make_env=None, optimizer=None, lr_scheduler=None, device=torch.device("cpu"),
            reference_weights=start,
        )  # fmt: skip

    with torch.no_grad():  # "SFT": the adapter moves off the base model
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    start, after_sft = trained_weights_copy(peft_model), policy()
    assert torch.equal(reference_logprobs(context("start"), [batch])[0], after_sft)
    with peft_model.disable_adapter():
        base = policy()
    assert torch.equal(reference_logprobs(context("base"), [batch])[0], base)
    assert not torch.allclose(base, after_sft)

    with torch.no_grad():  # "RL": the policy moves on; the start reference stays where RL began
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(-1)
    moved = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    assert torch.equal(reference_logprobs(context("start"), [batch])[0], after_sft)
    assert not torch.allclose(policy(), after_sft)
    for name, p in peft_model.named_parameters():
        assert torch.equal(p, moved[name]), f"computing the reference changed {name}"
