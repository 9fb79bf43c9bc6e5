"""The environment interface: a (possibly multi-turn) episode that ends with a reward.

An environment is reset with a seed and returns the opening chat messages. The engine samples an
assistant reply; ``step`` takes its text and returns the next user message (or none), the reward
for that turn, whether the episode is over, and an ``info`` dict. ``info["correct"]`` is the
task's own notion of success (exact match for letter counting), kept apart from the reward so a
shaped reward can never make an accuracy metric lie (footgun 5 of the war journal).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


@dataclass
class StepResult:
    next_message: Message | None
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


class Env(ABC):
    """One episode at a time. Make a fresh instance (or call ``reset``) per episode."""

    #: Episodes are cut after this many assistant turns (the last step is forced to be done).
    max_turns: int = 1

    @property
    def chat_template_kwargs(self) -> dict[str, Any]:
        """Extra variables for the chat template when this env's prompts are rendered (e.g.
        ``enable_thinking`` for Qwen3); none by default."""
        return {}

    @abstractmethod
    def reset(self, seed: int) -> list[Message]:
        """Start an episode: the same seed gives the same task, so k copies form one GRPO group."""

    @abstractmethod
    def step(self, assistant_text: str) -> StepResult:
        """Score the assistant's reply; return the next message or ``done``."""

    def demonstration(self, seed: int) -> list[Message]:
        """A worked example for the task of ``seed``: its opening messages plus an ideal assistant
        reply. Used by the SFT warm-up; environments without demonstrations leave it unimplemented."""
        raise NotImplementedError(
            f"{type(self).__name__} has no demonstrations, so SFT warm-up cannot run on it"
        )


def describe_error(error: BaseException) -> str:
    """A short, one-line reason for ``info["parse_error"]`` (messages can quote megabytes of text)."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message[:160]}"
