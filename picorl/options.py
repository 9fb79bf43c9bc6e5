"""Helpers for the config dataclasses: a documented field, and validation that names the fix."""

from __future__ import annotations

import typing
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


def typed_value(where: str, value: Any, hint: Any) -> Any:
    """``value`` checked against a field's type hint (``int``, ``float | None``, ``list[int]``...),
    with ints widened to floats and a lone int to a one-item list. ``where`` names the key in the
    error (``[rollout] k``): TOML gives ``k = 2.5`` or ``resume = "yes"`` as they are written."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where} needs a value ({_kind(base)})")
    if typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        items = value if isinstance(value, list | tuple) else [value]
        if not items or not all(_matches(v, item) for v in items):
            raise ValueError(
                f"{where} must be a list, each item {_kind(item)}, got {value!r}{_auto_hint(optional)}"
            )
        return [_widen(v, item) for v in items]
    if not _matches(value, base):
        raise ValueError(
            f"{where} must be {_kind(base)}, got {value!r} ({type(value).__name__}){_auto_hint(optional)}"
        )
    return _widen(value, base)


def _matches(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind)


def _widen(value: Any, kind: type) -> Any:
    return float(value) if kind is float else value


def _kind(kind: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, str(kind))


def _auto_hint(optional: bool) -> str:
    return "; leave it out for the default" if optional else ""
