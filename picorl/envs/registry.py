"""Environments by name, so the CLI and configs can say ``--env letter_counting``."""

from __future__ import annotations

from typing import Any

from picorl.envs.base import Env
from picorl.envs.letter_counting import LetterCounting

_ENVS: dict[str, type[Env]] = {"letter_counting": LetterCounting}
ENV_NAMES: tuple[str, ...] = tuple(sorted(_ENVS))


def make_env(name: str, **kwargs: Any) -> Env:
    """A fresh environment called ``name``, built with ``kwargs`` (e.g. ``difficulty=3``)."""
    if name not in _ENVS:
        raise ValueError(f"unknown environment {name!r}; choose one of {', '.join(ENV_NAMES)}")
    return _ENVS[name](**kwargs)
