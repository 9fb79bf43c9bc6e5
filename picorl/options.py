"""Helpers for the config dataclasses: a documented field, and validation that names the fix."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def opt(default: Any, help: str) -> Any:
    """A dataclass field with its documentation attached (shown by ``--help`` and the README)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {'|'.join(allowed)}, got {value!r}")
