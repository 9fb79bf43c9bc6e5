"""Thinking mode with the real Qwen3 tokenizer and chat template, on a tiny random Qwen3 model."""

import pytest

from picorl.config import ModelConfig
from picorl.engine import HFEngine, SamplingParams
from picorl.envs.letter_counting import LetterCounting
from picorl.models import load_model_and_tokenizer
from picorl.rollout.episodes import render_prompt, run_episodes
from picorl.train.policy import make_policy
from picorl.train.sft import DemonstrationStream, demonstration_tokens, run_sft


@pytest.fixture(scope="module")
def qwen3():
    return load_model_and_tokenizer("tiny-qwen3-thinking")


def test_thinking_prompt_opens_the_reply_and_the_demonstration_thinks(qwen3):
    _, tokenizer = qwen3
    env = LetterCounting(6, thinking=True)
    chat = env.demonstration(11)
    prompt = render_prompt(tokenizer, chat[:-1], **env.chat_template_kwargs)
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    [(ids, start)] = demonstration_tokens(tokenizer, [chat], **env.chat_template_kwargs)
    reply = tokenizer.decode(ids[start:])
    assert reply.startswith("<think>\nCounting ") and "\n</think>\n\n<answer>{" in reply
    assert reply.endswith("</answer><|im_end|>\n")
    env.reset(11)
    assert env.step(reply.removesuffix("<|im_end|>\n")).info["correct"]


def test_without_thinking_the_template_closes_an_empty_think_block(qwen3):
    _, tokenizer = qwen3
    env = LetterCounting(1, thinking=False)
    chat = env.demonstration(2)
    prompt = render_prompt(tokenizer, chat[:-1], **env.chat_template_kwargs)
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    [(ids, start)] = demonstration_tokens(tokenizer, [chat], **env.chat_template_kwargs)
    assert tokenizer.decode(ids[start:]).startswith("Counting ")


def test_only_the_answer_after_thinking_counts():
    env = LetterCounting(1)
    env.reset(4)
    right = env.task.counts[0]
    inside = env.step(f"<think>\n<answer>{right}</answer>\n</think>\n\nno answer here")
    assert inside.reward == 0.0 and not inside.info["correct"]
    after = env.step(f"<think>\nwrong: <answer>{right + 1}</answer>\n</think>\n\n<answer>{right}</answer>")
    assert after.info["correct"]
    open_ended = env.step(f"<think>\n<answer>{right}</answer>")  # thinking cut off
    assert not open_ended.info["format_ok"]


def test_sft_and_rollouts_run_in_thinking_mode(qwen3):
    model, tokenizer = qwen3
    model = make_policy(model, ModelConfig(lora_rank=4, gradient_checkpointing=False))
    env = LetterCounting(1, thinking=True)

    def demonstrate(tasks):
        return demonstration_tokens(tokenizer, [env.demonstration(seed) for _, seed in tasks], **env.chat_template_kwargs)

    stream = DemonstrationStream(demonstrate, [1], steps=2, batch_size=2, curriculum=False)
    losses = []
    run_sft(model, tokenizer, stream, lr=1e-3, device="cpu", log=lambda s, m: losses.append(m["sft/loss"]))
    assert len(losses) == 2
    episodes = run_episodes(
        lambda: LetterCounting(1, thinking=True), [5, 6], HFEngine(model, tokenizer),
        tokenizer, SamplingParams(max_tokens=8, temperature=1.0, seed=0), k=2,
    )  # fmt: skip
    assert len(episodes) == 4
    assert tokenizer.decode(episodes[0].prompt_ids).endswith("<|im_start|>assistant\n")
    assert all(e.info["reasoning_chars"] >= 0 for e in episodes)
