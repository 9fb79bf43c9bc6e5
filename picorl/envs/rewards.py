"""Parsing and scoring letter-counting answers (pure functions, no state).

What counts as an answer (stricter than the seed, closing its reward holes):

- Only the final answer counts. If the text has a ``</think>``, only what follows the last one is
  read, so an ``<answer>`` written while thinking never scores; a ``<think>`` left open (thinking
  cut off) means there is no final answer. Tags are matched case-insensitively, like the seed.
- The final answer must hold exactly one ``<answer>`` and one ``</answer>``, in that order; two
  blocks score 0.0 (a model must commit to one answer). The block may span lines.
- The block's content is read as JSON, so there is one precise notion of "a number":
  one letter asked -> a bare non-negative JSON integer (``<answer>3</answer>``), as the prompt
  asks; ``{"r": 3}`` is refused there, as is a bare number when several letters are asked.
  several letters -> a JSON object whose values are all non-negative JSON integers, no duplicate
  keys. Refused everywhere: ``true``/``false`` (bools are not counts), ``2.0``/``2.5``/``1e2``
  (floats), ``"3"`` (strings), ``-1`` (a negative count), ``NaN``, ``03``, code fences.
  A refused answer is unparseable and scores 0.0, like no answer.

Partial reward (mode ``"partial"``, the seed's rule with its holes closed):
  no single parseable answer -> 0.0; exactly right -> 1.0; keys not exactly the asked letters (extra,
  missing or miss-spelled keys) -> 0.1 with no per-letter credit; every value 0 with the right keys
  but not right -> 0.1 (the prompt's format example is an all-zero object, so copying it must not
  earn credit for the letters that happen to be absent); otherwise 0.1 + 0.9 * (fraction of asked
  letters exactly right). With one letter this is 1.0 exact, else 0.1.
Binary reward (mode ``"binary"``): 1.0 if exactly right, else 0.0.

Model text never raises: whatever a parser throws on it (``RecursionError`` on a thousand nested
``[``, say) makes the reply unparseable, scored 0.0, with the reason in ``info["parse_error"]``
(counted per update as ``reward/parse_errors``). A crash here would end a run on one sample.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal, Protocol

from picorl.envs.base import describe_error

RewardMode = Literal["partial", "binary"]
REWARD_MODES: tuple[str, ...] = ("partial", "binary")


class CountingTask(Protocol):
    """What scoring reads of a task (``picorl.envs.letter_counting.LetterTask`` is one); a protocol
    here, so this module needs nothing from the environment that uses it."""

    letters: tuple[str, ...]
    tier: int

    @property
    def expected(self) -> dict[str, int]: ...


_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)


def final_answer_text(text: str) -> str | None:
    """The part of a reply after its thinking, or None if the thinking never ended."""
    closes = list(_THINK_CLOSE.finditer(text))
    final = text[closes[-1].end() :] if closes else text
    return None if _THINK_OPEN.search(final) else final


def answer_block(text: str) -> str | None:
    """The stripped content of the one ``<answer>`` block of the final answer, else None."""
    final = final_answer_text(text)
    if final is None:
        return None
    if len(_ANSWER_OPEN.findall(final)) != 1 or len(_ANSWER_CLOSE.findall(final)) != 1:
        return None
    match = _ANSWER_BLOCK.search(final)
    return match.group(1).strip() if match else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a count")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key in answer")
    return dict(pairs)


def _is_count(value: Any) -> bool:
    # type() rather than isinstance(): bool is a subclass of int, and `true` is not a count.
    return type(value) is int and value >= 0


def parse_answer(text: str, letters: tuple[str, ...] | list[str]) -> dict[str, int] | None:
    """Read the counts a reply commits to, or None if it has no single well-formed answer.

    ``letters`` only decides the expected shape: one letter wants a bare integer (returned as
    ``{letter: n}``), several want a JSON object, returned as is even if its keys are wrong, so
    ``score`` can tell a wrong key set (0.1) from no answer (0.0).
    """
    if not letters:
        raise ValueError("parse_answer needs at least one letter to know the answer's shape")
    content = answer_block(text)
    if content is None:
        return None
    try:
        value = json.loads(content, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except ValueError:  # json.JSONDecodeError is a ValueError
        return None
    if len(letters) == 1:
        return {letters[0]: value} if _is_count(value) else None
    if not isinstance(value, dict) or not all(_is_count(v) for v in value.values()):
        return None
    return value


def score(text: str, task: CountingTask, mode: RewardMode = "partial") -> tuple[float, dict[str, Any]]:
    """Reward one reply to ``task`` and describe it.

    ``info`` keys: ``correct`` (every asked letter exactly right, right key set), ``format_ok``
    (exactly one parseable answer), ``keys_ok`` (the answer's keys are exactly the asked letters),
    ``tier``, ``n_letters``, ``n_letters_correct`` (asked letters whose answered count is right,
    whatever the reward rule paid), ``expected`` (letter -> count) and ``parsed`` (or None).
    """
    if mode not in REWARD_MODES:
        raise ValueError(f"unknown reward mode {mode!r}; use one of {REWARD_MODES}")
    expected = task.expected
    parse_error = None
    try:
        parsed = parse_answer(text, task.letters)
    except Exception as e:  # noqa: BLE001 - any failure on model text is an unparseable answer
        parsed, parse_error = None, describe_error(e)
    format_ok = parsed is not None
    keys_ok = format_ok and set(parsed) == set(expected)
    n_right = 0 if parsed is None else sum(parsed.get(k) == v for k, v in expected.items())
    correct = keys_ok and n_right == len(expected)

    if mode == "binary":
        reward = 1.0 if correct else 0.0
    elif not format_ok:
        reward = 0.0
    elif correct:
        reward = 1.0
    elif not keys_ok or not any(parsed.values()):  # wrong keys, or the all-zero example copied
        reward = 0.1
    else:
        reward = 0.1 + 0.9 * n_right / len(expected)

    info = {
        "correct": correct,
        "format_ok": format_ok,
        "keys_ok": keys_ok,
        "tier": task.tier,
        "n_letters": len(expected),
        "n_letters_correct": n_right,
        "expected": dict(expected),
        "parsed": parsed,
    }
    if parse_error is not None:
        info["parse_error"] = parse_error
    return reward, info
