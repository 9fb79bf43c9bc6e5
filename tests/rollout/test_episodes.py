from functools import partial

import pytest

from picorl.engine.types import Completion, SamplingParams
from picorl.envs import Env, StepResult, make_env
from picorl.models import load_model_and_tokenizer
from picorl.rollout.episodes import render_prompt, run_episodes


@pytest.fixture(scope="module")
def tokenizer():
    return load_model_and_tokenizer("tiny-llama")[1]


class ScriptedEngine:
    """Returns fixed replies and records every prompt it was asked to continue."""

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies, self.calls = tokenizer, list(replies), []

    def generate(self, prompts, params, n=1):
        self.calls.append((prompts, n))
        out = []
        for _ in prompts:
            group = []
            for _ in range(n):
                text = self.replies.pop(0)
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [
                    self.tokenizer.eos_token_id
                ]
                group.append(Completion(ids, [-1.0] * len(ids), "stop", text))
            out.append(group)
        return out


def test_a_group_is_k_samples_of_one_prompt(tokenizer):
    engine = ScriptedEngine(tokenizer, ["<answer>1</answer>"] * 12)
    make = partial(make_env, "letter_counting", difficulty=[1, 2, 3])
    episodes = run_episodes(make, [11, 22, 33], engine, tokenizer, SamplingParams(max_tokens=8), k=4)
    ((prompts, n),) = engine.calls
    assert n == 4 and len(prompts) == 3 and len(episodes) == 12
    for g in range(3):
        group = episodes[4 * g : 4 * g + 4]
        assert {e.group for e in group} == {g}
        assert all(e.prompt_ids == prompts[g] for e in group)
        assert len({tuple(e.messages[1]["content"]) for e in group}) == 1
    assert prompts[0] != prompts[1] != prompts[2]


class TwoTurnEnv(Env):
    max_turns = 3

    def reset(self, seed):
        self.turn = 0
        return [{"role": "user", "content": f"say hi ({seed})"}]

    def step(self, text):
        self.turn += 1
        if self.turn == 1:
            return StepResult({"role": "user", "content": "again"}, 0.25, False, {})
        return StepResult(None, 1.0, True, {"correct": True})


def test_multi_turn_keeps_sampled_ids_and_masks_env_tokens(tokenizer):
    engine = ScriptedEngine(tokenizer, ["hi", "hello"])
    (episode,) = run_episodes(TwoTurnEnv, [5], engine, tokenizer, SamplingParams(max_tokens=8), k=1)
    first = tokenizer("hi", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    second = tokenizer("hello", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids, mask = episode.completion_ids, episode.action_mask
    assert ids[: len(first)] == first and ids[-len(second) :] == second
    assert mask[: len(first)] == [True] * len(first) and mask[-len(second) :] == [True] * len(second)
    middle = mask[len(first) : -len(second)]
    assert middle and not any(middle), "template and user tokens between turns are not actions"
    assert episode.reward == 1.25 and episode.num_turns == 2 and episode.info == {"correct": True}
    # the second prompt the engine saw is exactly prompt + first completion + the env's turn
    second_prompt = engine.calls[1][0][0]
    assert second_prompt == episode.prompt_ids + ids[: -len(second)]
    full = render_prompt(tokenizer, episode.messages[:-1])
    assert tokenizer.decode(second_prompt) == tokenizer.decode(full)


class ChokingEnv(Env):
    """An environment whose parser fails on one reply, as a badly written env might."""

    def reset(self, seed):
        return [{"role": "user", "content": "count"}]

    def step(self, text):
        if "[" in text:
            raise RecursionError("maximum recursion depth exceeded")
        return StepResult(None, 1.0, True, {"correct": True, "format_ok": True})


def test_an_env_raising_on_model_text_gives_zero_reward_and_a_counted_reason(tokenizer):
    import torch

    from picorl.train.update import rollout_metrics

    engine = ScriptedEngine(tokenizer, ["fine", "[[[[", "fine"])
    episodes = run_episodes(ChokingEnv, [1, 2, 3], engine, tokenizer, SamplingParams(max_tokens=8))
    assert [e.reward for e in episodes] == [1.0, 0.0, 1.0]
    assert episodes[1].info["parse_error"].startswith("RecursionError")
    rewards = torch.tensor([e.reward for e in episodes])
    groups = torch.tensor([e.group for e in episodes])
    metrics = rollout_metrics(episodes, rewards, groups, torch.zeros(3), torch.ones(3, dtype=torch.bool))
    assert metrics["reward/parse_errors"] == 1.0
