"""Environments: tasks with verifiable rewards."""

from picorl.envs.base import Env, Message, StepResult
from picorl.envs.letter_counting import LetterCounting, LetterTask, make_task, sft_chat
from picorl.envs.registry import ENV_NAMES, make_env
from picorl.envs.rewards import parse_answer, score

__all__ = [
    "ENV_NAMES", "Env", "LetterCounting", "LetterTask", "Message", "StepResult",
    "make_env", "make_task", "parse_answer", "score", "sft_chat",
]  # fmt: skip
