"""Reasoning formats ("traces") for letter counting: how an SFT demonstration works a task out.

Only the ``<answer>`` block is ever scored, so any reasoning is legal for the policy; a format only
decides what the supervised demonstrations teach. The formats, on the task "count r and s in
``strawberry``" (the answer block follows each trace):

``spell`` (the seed's): spell the whole string, then state each count::

    Let me spell out "strawberry" letter by letter:
    s, t, r, a, w, b, e, r, r, y

    Counting each letter:
    "r" appears 3 times
    "s" appears 1 time

``scan``: one character per line, each asked letter followed by its running count, so a count is
never more than one addition away from a line the model has just written::

    Counting r, s one character at a time:
    s=1
    t
    r=1
    a
    ...
    y

``window``: ``scan`` plus, before every block of 8 characters, that block copied from the string
(``[strawber]``), so the per-character lines copy from a short local window and a slip in the long
copy cannot carry over into the next block::

    Counting r, s one character at a time:
    [strawber]
    s=1
    t
    ...
    [ry]
    r=3
    y

``pieces``: ``scan`` aligned with how the model's tokenizer cut the string in the prompt: every
piece of more than one character (one token of the prompt, e.g. ``aw`` of ``str|aw|berry``) is first
copied whole, then spelled one character per line::

    Counting r, s one character at a time:
    [str]
    s=1
    t
    r=1
    [aw]
    a
    w
    ...

Why: the model reads the prompt's string as tokens of 1-3 letters, and ``scan``'s errors on random
strings are copy slips: of the 76 differences between the strings written and the strings asked in
the 2026-12-01 tier-6 run, 60 were a skipped or a repeated letter (several at pairs such as ``ss``).
Copying a whole token is what language models do best (the same token id as in the prompt), and
spelling a short token is local; ``window``'s 8-character blocks cut across tokens and copied worse
than ``scan``. On tier 6 after 250 LoRA SFT steps, ``pieces`` reached 0.925 and ``scan`` 0.815
(docs/results.md, 2026-12-02). Only this format needs the tokenizer: the env gets a ``text_pieces``
function.

Why ``scan``: the seed's ``spell`` makes the model hold every count in its head at the end (for
tier 6, ten counts over 40-80 letters at once); a 135M model copies letters well but cannot count a
letter over a long list in one step. ``scan`` turns counting into one increment per line.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Literal, Protocol

CotFormat = Literal["spell", "scan", "window", "pieces"]
COT_FORMATS: tuple[str, ...] = ("spell", "scan", "window", "pieces")
WINDOW = 8  # characters per copied block in the ``window`` format


class LetterTask(Protocol):
    """What a trace reads of a task (``picorl.envs.letter_counting.LetterTask`` is one); a protocol
    here, so this module needs nothing from the environment that uses it."""

    text: str
    letters: tuple[str, ...]
    counts: tuple[int, ...]


def _times(n: int) -> str:
    return "1 time" if n == 1 else f"{n} times"


def spell_trace(task: LetterTask) -> str:
    lines = [f'Let me spell out "{task.text}" letter by letter:', ", ".join(task.text), ""]
    if len(task.letters) == 1:
        lines.append(f'The letter "{task.letters[0]}" appears {_times(task.counts[0])}.')
    else:
        lines.append("Counting each letter:")
        lines += [f'"{c}" appears {_times(n)}' for c, n in zip(task.letters, task.counts)]
    return "\n".join(lines)


def _scan_lines(task: LetterTask, blocks: Sequence[str], shortest_copied: int) -> list[str]:
    """One line per character; each of ``blocks`` (a cut of ``task.text``) of at least
    ``shortest_copied`` characters is first copied on a ``[block]`` line."""
    if "".join(blocks) != task.text:
        raise ValueError(f"the pieces {list(blocks)[:8]}... do not spell the task's string {task.text!r}")
    asked = set(task.letters)
    running = dict.fromkeys(task.letters, 0)
    lines = [f"Counting {', '.join(task.letters)} one character at a time:"]
    offsets = accumulate((len(b) for b in blocks), initial=0)
    starts = {at: b for at, b in zip(offsets, blocks) if len(b) >= shortest_copied}
    for i, c in enumerate(task.text):
        if i in starts:
            lines.append(f"[{starts[i]}]")
        if c in asked:
            running[c] += 1
            lines.append(f"{c}={running[c]}")
        else:
            lines.append(c)
    return lines


def scan_trace(task: LetterTask) -> str:
    return "\n".join(_scan_lines(task, list(task.text), shortest_copied=2))


def window_trace(task: LetterTask) -> str:
    text = task.text
    blocks = [text[i : i + WINDOW] for i in range(0, len(text), WINDOW)]
    return "\n".join(_scan_lines(task, blocks, shortest_copied=1))


def pieces_trace(task: LetterTask, pieces: Sequence[str]) -> str:
    """``scan`` with every multi-character piece of ``pieces`` (the tokenizer's cut of the string)
    copied whole first."""
    return "\n".join(_scan_lines(task, pieces, shortest_copied=2))


_TRACES = {"spell": spell_trace, "scan": scan_trace, "window": window_trace}


def trace(task: LetterTask, cot: CotFormat, pieces: Sequence[str] | None = None) -> str:
    """The reasoning of format ``cot`` for ``task`` (without the answer block); ``pieces``: how the
    model's tokenizer cuts ``task.text`` (needed by ``pieces`` only)."""
    if cot == "pieces":
        if pieces is None:
            raise ValueError(
                "the 'pieces' reasoning format follows the model's tokenizer: build the environment "
                "with text_pieces (picorl.runtime.env_factory does, given the tokenizer)"
            )
        return pieces_trace(task, pieces)
    if cot not in _TRACES:
        raise ValueError(f"unknown reasoning format {cot!r}; use one of {', '.join(COT_FORMATS)}")
    return _TRACES[cot](task)
