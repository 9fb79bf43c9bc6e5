import torch

from picorl.algos.config import AlgoConfig
from picorl.config import Config, RolloutConfig, TrainConfig
from picorl.engine.types import Completion
from picorl.envs import Env, StepResult
from picorl.train.update import UpdateContext, collect


class Echo(Env):
    def reset(self, seed):
        return [{"role": "user", "content": str(seed)}]

    def step(self, text):
        return StepResult(None, float(text == "a"), True, {"correct": text == "a"})


class RoundsEngine:
    """Round 1: every sample of every group says "b" (no variance); later rounds alternate a/b."""

    def __init__(self):
        self.rounds = 0

    def generate(self, prompts, params, n=1):
        self.rounds += 1
        texts = ["b"] * n if self.rounds == 1 else ["a", "b"] * (n // 2)
        return [[Completion([1], [-0.1], "stop", t) for t in texts] for _ in prompts]


class Tok:
    pad_token_id = 0

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        return messages[-1]["content"]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2, 3]}


def context(engine, zero_variance, max_draws=3):
    config = Config(
        algo=AlgoConfig(zero_variance=zero_variance, dynamic_max_draws=max_draws),
        rollout=RolloutConfig(k=4, num_tasks=2, max_tokens=256), train=TrainConfig(micro_batch_size=4, seed=0),
    )
    return UpdateContext(
        config=config, model=None, tokenizer=Tok(), engine=engine, make_env=Echo, optimizer=None,
        lr_scheduler=None, device=torch.device("cpu"),
    )  # fmt: skip


def test_dynamic_sampling_draws_until_the_batch_has_informative_groups():
    episodes, metrics = collect(context(RoundsEngine(), "dynamic"), update=0)
    assert metrics["groups/drawn"] == 4  # two rounds of two groups
    assert len(episodes) == 8 and {e.group for e in episodes} == {2, 3}
    assert {e.reward for e in episodes} == {0.0, 1.0}


def test_dynamic_sampling_is_bounded():
    engine = RoundsEngine()
    engine.generate = lambda prompts, params, n=1: [
        [Completion([1], [0.0], "stop", "b")] * n for _ in prompts
    ]
    episodes, metrics = collect(context(engine, "dynamic", max_draws=3), update=0)
    assert metrics["groups/drawn"] == 6 and len({e.group for e in episodes}) == 2


def test_keep_draws_once():
    episodes, metrics = collect(context(RoundsEngine(), "keep"), update=0)
    assert metrics["groups/drawn"] == 2 and len(episodes) == 8
