"""Run environment episodes over an engine, keeping the exact sampled token ids.

A GRPO group is k episodes of ONE task: k environments reset with the same seed, one prompt,
``engine.generate(prompt, n=k)``. Multi-turn episodes continue by appending the environment's next
message, rendered with the chat template, after the exact sampled tokens, so the trainer sees the
very ids the engine produced (never a re-tokenization of decoded text, which can give other ids
than the sampled ones and so train on tokens the policy never chose).

An environment that raises on a reply does not end the run: the episode ends there with reward 0
and the reason in ``info["parse_error"]`` (the update counts them as ``reward/parse_errors``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from picorl.engine.types import Completion, RolloutEngine, SamplingParams
from picorl.envs.base import Env, Message, StepResult, describe_error


@dataclass
class Episode:
    """One sampled episode, ready for the trainer."""

    group: int  # index of its group (its task) in the batch
    task_seed: int
    prompt_ids: list[int]  # the first prompt, chat template included
    completion_ids: list[int] = field(default_factory=list)  # everything after the prompt
    action_mask: list[bool] = field(default_factory=list)  # True where the policy sampled the token
    engine_logprobs: list[float] = field(default_factory=list)  # 0.0 where not sampled
    messages: list[Message] = field(default_factory=list)
    reward: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    finish_reason: str = "stop"  # of the last turn: "length" means the completion was cut off
    num_turns: int = 0
    advantage: float | None = None  # set by the update (None for PPO, whose advantages are per token)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def num_generated(self) -> int:
        return sum(self.action_mask)

    @property
    def completion_text(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "assistant")


def prompt_text(tokenizer, messages: list[Message], **template_kwargs: Any) -> str:
    """Chat-template ``messages`` and append the assistant header. ``template_kwargs`` reach the
    template (an env's ``chat_template_kwargs``, e.g. ``enable_thinking``)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **template_kwargs)


def render_prompt(tokenizer, messages: list[Message], **template_kwargs: Any) -> list[int]:
    """:func:`prompt_text` as token ids."""
    return tokenizer(prompt_text(tokenizer, messages, **template_kwargs), add_special_tokens=False)["input_ids"]


def _continuation_ids(
    tokenizer, episode: Episode, next_message: Message, template_kwargs: dict[str, Any]
) -> list[int]:
    """Tokens between the last sampled token and the next generation: what the template puts after
    the assistant's end-of-turn token (e.g. a newline), the new message and the assistant header.
    Taken as the difference between the templated conversation and the decoded tokens so far, so
    the ids the engine sampled stay untouched."""
    so_far = tokenizer.decode(episode.prompt_ids + episode.completion_ids, skip_special_tokens=False)
    after = tokenizer.apply_chat_template(
        episode.messages + [next_message], add_generation_prompt=True, tokenize=False, **template_kwargs
    )
    if not after.startswith(so_far):
        before = tokenizer.apply_chat_template(episode.messages, tokenize=False, **template_kwargs)
        if not after.startswith(before):
            raise ValueError(
                "the chat template re-renders earlier turns differently; multi-turn needs a stable one"
            )
        so_far = before  # e.g. a completion cut off before its end-of-turn token
    return tokenizer(after[len(so_far) :], add_special_tokens=False)["input_ids"]


def _add_turn(episode: Episode, completion: Completion) -> None:
    episode.completion_ids += completion.token_ids
    episode.action_mask += [True] * len(completion.token_ids)
    episode.engine_logprobs += completion.logprobs
    episode.finish_reason = completion.finish_reason
    episode.num_turns += 1


def safe_step(env: Env, text: str) -> StepResult:
    """``env.step(text)``, with any exception the model's text provokes turned into a 0-reward end."""
    try:
        return env.step(text)
    except Exception as e:  # noqa: BLE001 - model text must never crash a run
        info = {"correct": False, "format_ok": False, "parse_error": describe_error(e)}
        return StepResult(next_message=None, reward=0.0, done=True, info=info)


def run_episodes(
    make_env: Callable[[], Env],
    task_seeds: list[int],
    engine: RolloutEngine,
    tokenizer,
    params: SamplingParams,
    k: int = 1,
) -> list[Episode]:
    """Run ``k`` episodes of each task; returns them grouped: task 0's k episodes first, and so on."""
    envs = [make_env() for _ in range(len(task_seeds) * k)]
    episodes: list[Episode] = []
    prompts = []
    for g, seed in enumerate(task_seeds):
        messages = envs[g * k].reset(seed)
        for j in range(1, k):
            envs[g * k + j].reset(seed)
        prompt = render_prompt(tokenizer, messages, **envs[g * k].chat_template_kwargs)
        prompts.append(prompt)
        episodes += [Episode(g, seed, prompt, messages=list(messages)) for _ in range(k)]

    groups = engine.generate(prompts, params, n=k)
    active = list(range(len(episodes)))
    completions = [c for group in groups for c in group]
    while active:
        still_active = []
        for i, completion in zip(active, completions):
            episode, env = episodes[i], envs[i]
            _add_turn(episode, completion)
            result = safe_step(env, completion.text)
            episode.messages.append({"role": "assistant", "content": completion.text})
            episode.reward += result.reward
            episode.info = result.info
            if result.done or result.next_message is None or episode.num_turns >= env.max_turns:
                continue
            cont = _continuation_ids(tokenizer, episode, result.next_message, env.chat_template_kwargs)
            episode.messages.append(result.next_message)
            episode.completion_ids += cont
            episode.action_mask += [False] * len(cont)
            episode.engine_logprobs += [0.0] * len(cont)
            still_active.append(i)
        if not still_active:
            break
        next_prompts = [episodes[i].prompt_ids + episodes[i].completion_ids for i in still_active]
        completions = [group[0] for group in engine.generate(next_prompts, params, n=1)]
        active = still_active
    return episodes


def sample_row(step: int, episode: Episode, kind: str = "train") -> dict[str, Any]:
    """One line of samples.jsonl: what the report's browser shows of an episode (and what it needs
    to group it: update, group; to explain its reward: expected and parsed answer, advantage)."""
    return {
        "update": step,
        "kind": kind,
        "group": episode.group,
        "task_seed": episode.task_seed,
        "prompt": episode.messages[: len(episode.messages) - episode.num_turns],
        "completion": episode.completion_text,
        "reward": episode.reward,
        "correct": bool(episode.info.get("correct")),
        "completion_tokens": episode.num_generated,
        "finish_reason": episode.finish_reason,
        "advantage": episode.advantage,
        "tier": episode.info.get("tier"),
        "expected": episode.info.get("expected"),
        "parsed": episode.info.get("parsed"),
    }
