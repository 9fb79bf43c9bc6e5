"""Gradients point the right way: a tiny model learns a rewarded behaviour under every algorithm,
and does not move at all when every reward is equal."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from picorl.algos import advantages as adv
from picorl.algos.config import AlgoConfig
from picorl.algos.value_head import ValueHead, value_head_param_group
from picorl.config import Config, RolloutConfig, TrainConfig
from picorl.engine import EngineConfig, LLMEngine
from picorl.engine.types import SamplingParams
from picorl.rollout.episodes import Episode
from picorl.train.batch import make_micro_batches
from picorl.train.update import UpdateContext, optimize

TARGET = 5  # the rewarded token
VOCAB = 16
PROMPTS = [[1, 2, 3], [4, 6, 7, 8], [9, 10]]


def tiny_policy():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, eos_token_id=None, bos_token_id=None,
        initializer_range=0.2,  # the fixed output head must be able to express a confident choice
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))


def train(algo: str, constant_reward: bool, updates: int, k: int = 8):
    model = tiny_policy()
    cfg = AlgoConfig(algo=algo)
    head = ValueHead(model.config.hidden_size) if algo == "ppo" else None
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if head is not None:
        groups.append(value_head_param_group(head, 1e-2))
    optimizer = torch.optim.AdamW(groups, lr=2e-2, weight_decay=0.0)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    params = SamplingParams(max_tokens=4, temperature=1.0, ignore_eos=True)
    engine = LLMEngine(model, None, EngineConfig(num_blocks=64))
    config = Config(
        algo=cfg, rollout=RolloutConfig(k=k, num_tasks=len(PROMPTS), max_tokens=4, temperature=1.0),
        train=TrainConfig(micro_batch_size=8, max_grad_norm=1.0, seed=0),
    )
    ctx = UpdateContext(
        config=config, model=model, tokenizer=None, engine=engine, make_env=None, optimizer=optimizer,
        lr_scheduler=lr_scheduler, device=torch.device("cpu"), value_head=head,
    )  # fmt: skip
    fractions = []
    for update in range(updates):
        groups = engine.generate(PROMPTS, SamplingParams(**{**params.__dict__, "seed": update}), n=k)
        episodes = [
            Episode(
                g, 0, PROMPTS[g], c.token_ids, [True] * len(c.token_ids), c.logprobs, finish_reason="length"
            )
            for g, group in enumerate(groups)
            for c in group
        ]
        hits = torch.tensor([sum(t == TARGET for t in e.completion_ids) / 4 for e in episodes])
        fractions.append(float(hits.mean()))
        rewards = torch.zeros_like(hits) if constant_reward else hits
        group_ids = torch.tensor([e.group for e in episodes])
        advantages = adv.compute_advantages(rewards, group_ids, cfg)
        batches = make_micro_batches(episodes, advantages, 8, 0, torch.device("cpu"))
        optimize(ctx, batches, max_completion_length=4)
    return model, fractions


@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforce", "ppo"])
def test_policy_learns_the_rewarded_token(algo):
    _, fractions = train(algo, constant_reward=False, updates=20)
    start, end = fractions[0], sum(fractions[-5:]) / 5
    assert start < 0.15, f"the behaviour must be rare at first ({start:.2f})"
    assert end > 0.6, (
        f"{algo}: rewarded token fraction {start:.2f} -> {end:.2f} over {len(fractions)} updates"
    )


@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforce", "ppo"])
def test_equal_rewards_do_not_move_the_policy(algo):
    before = {n: p.detach().clone() for n, p in tiny_policy().named_parameters()}
    model, _ = train(algo, constant_reward=True, updates=3)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), f"{algo}: {name} moved although every reward was equal"
