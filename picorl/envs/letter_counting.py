"""Letter counting: how many times does each asked letter occur in a string?

Ten difficulty tiers, as in the seed (ported from NousResearch Atropos):

| tier | text          | length  | P(multi) | letters (when multi) |
|------|---------------|---------|----------|----------------------|
| 1    | English word  | 3-8     | 0        | 1                    |
| 2    | English word  | 5-12    | 0.5      | 2                    |
| 3    | English word  | 8-18    | 0.6      | 2-3                  |
| 4    | English word  | 10-25   | 0.8      | 3-5                  |
| 5    | English word  | 15-35   | 0.9      | 5-8                  |
| 6    | random a-z    | 40-80   | 1        | 8-12                 |
| 7    | random a-z    | 80-150  | 1        | 12-20                |
| 8    | random a-z    | 150-250 | 1        | 18-30 (max 26)       |
| 9    | random a-z    | 250-400 | 1        | 25-40 (max 26)       |
| 10   | random a-z    | 400-500 | 1        | 35-50 (max 26)       |

How a task is drawn (all from one ``random.Random``, so a seed fixes the task):

- Text, tiers 1-5: ONE word drawn uniformly from the web2 words whose length is in range, as the
  seed and Atropos did (no joining of words). The longest web2 words have 24 letters (one has 28),
  so tiers 4-5 top out there, and lengths follow the dictionary (more short words than long).
- Number of letters: with probability P(multi), ``randint(max(2, lo), hi)`` capped at 26, else 1
  (so tier 3 asks one letter 40% of the time, as the seed did). The cap applies after the draw, as
  in the seed: tier 8 asks 26 letters 5/13 of the time, tier 9 15/16 of the time, tier 10 always.
- Which letters, distinct: each task draws a presence rate p ~ U(0.3, 0.9); each asked letter
  should occur in the text with probability p (so models must also answer 0).
  Words: as in the seed, each letter is drawn from the word's letters with probability p, else
  from the letters it lacks; when one pool runs out the other is used.
  Random strings: the seed drew letters from the text, and a 40+ letter random string contains
  nearly every letter, so its tiers 6-10 almost never asked an absent letter. Here the letters
  and their presence are drawn first and the string is built to match: every letter meant to
  occur is placed once, the rest of the string is uniform over the letters not meant to be absent,
  then shuffled. (If all 26 letters came up absent, one is made present so the string has an
  alphabet.) So presence really follows p on every tier.
- Stitched strings (training data only, ``stitch_fraction`` of the random-string tasks): the same
  letters and presence, but the filler is whole pieces (the model tokenizer's alphabetic tokens of
  4+ letters, ``picorl.runtime.long_alphabetic_tokens``) cut to length. Why: after SFT on the
  'pieces' trace, 43 of SmolLM2's 55 wrong answers on tiers 6-8 were a token of 4+ letters spelled
  wrong, and random strings hold about one such token per three tasks (2026-12-02, fifth session).
"""

from __future__ import annotations

import json
import operator
import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from picorl.envs.base import Env, Message, StepResult
from picorl.envs.rewards import REWARD_MODES, RewardMode, final_answer_text, score
from picorl.envs.traces import COT_FORMATS, CotFormat, trace
from picorl.envs.words import words_with_length

ALPHABET = string.ascii_lowercase
PRESENCE_RANGE = (0.3, 0.9)

SYSTEM_PROMPT = (
    "You are a helpful assistant. Think step by step, then give your answer.\n"
    "Always wrap your final answer in <answer> tags."
)


@dataclass(frozen=True)
class TierSpec:
    random_text: bool  # False: one English word
    min_len: int
    max_len: int
    p_multi: float
    min_letters: int  # when multi; at least 2 is used
    max_letters: int  # before the cap at 26


TIERS: dict[int, TierSpec] = {
    1: TierSpec(False, 3, 8, 0.0, 1, 1),
    2: TierSpec(False, 5, 12, 0.5, 2, 2),
    3: TierSpec(False, 8, 18, 0.6, 2, 3),
    4: TierSpec(False, 10, 25, 0.8, 3, 5),
    5: TierSpec(False, 15, 35, 0.9, 5, 8),
    6: TierSpec(True, 40, 80, 1.0, 8, 12),
    7: TierSpec(True, 80, 150, 1.0, 12, 20),
    8: TierSpec(True, 150, 250, 1.0, 18, 30),
    9: TierSpec(True, 250, 400, 1.0, 25, 40),
    10: TierSpec(True, 400, 500, 1.0, 35, 50),
}


@dataclass(frozen=True)
class LetterTask:
    """One question: count each of ``letters`` (distinct, in asking order) in ``text``."""

    text: str
    letters: tuple[str, ...]
    counts: tuple[int, ...]  # counts[i] = text.count(letters[i])
    tier: int

    def __post_init__(self) -> None:
        if not self.letters or len(set(self.letters)) != len(self.letters):
            raise ValueError(f"letters must be non-empty and distinct, got {self.letters}")
        if any(len(c) != 1 or c not in ALPHABET for c in self.letters):
            raise ValueError(f"letters must be single a-z characters, got {self.letters}")
        if self.counts != tuple(self.text.count(c) for c in self.letters):
            raise ValueError(f"counts {self.counts} do not match the text for letters {self.letters}")

    @property
    def expected(self) -> dict[str, int]:
        return dict(zip(self.letters, self.counts))


def _check_tier(tier: int) -> int:
    if isinstance(tier, bool) or not isinstance(tier, int) or tier not in TIERS:
        raise ValueError(f"difficulty tier must be an int in 1..10, got {tier!r}")
    return tier


def _n_letters(spec: TierSpec, rng: random.Random) -> int:
    if rng.random() < spec.p_multi:
        return min(rng.randint(max(2, spec.min_letters), spec.max_letters), len(ALPHABET))
    return 1


def _word_task(spec: TierSpec, n: int, p: float, rng: random.Random) -> tuple[str, list[str]]:
    text = rng.choice(words_with_length(spec.min_len, spec.max_len))
    present = sorted(set(text))
    absent = sorted(set(ALPHABET) - set(text))
    letters = []
    for _ in range(n):
        want_present = rng.random() < p
        pool = present if (want_present and present) or not absent else absent
        letters.append(pool.pop(rng.randrange(len(pool))))
    return text, letters


def _random_string_task(
    spec: TierSpec, n: int, p: float, rng: random.Random, pieces: Sequence[str] = ()
) -> tuple[str, list[str]]:
    """A random string and the letters to ask (see the module docstring). With ``pieces`` (stitched
    strings, training data only) the filler is whole pieces without an absent letter, cut to length,
    and each present letter is put in at a random place; the letters asked are the same."""
    length = rng.randint(spec.min_len, spec.max_len)
    letters = rng.sample(ALPHABET, n)
    present = [c for c in letters if rng.random() < p]
    if n == len(ALPHABET) and not present:
        present = [rng.choice(letters)]
    absent = set(letters) - set(present)
    usable = [piece for piece in pieces if absent.isdisjoint(piece)]
    if not usable:
        fill_from = [c for c in ALPHABET if c not in absent]
        chars = present + [rng.choice(fill_from) for _ in range(length - len(present))]
        rng.shuffle(chars)
        return "".join(chars), letters
    chars: list[str] = []
    while len(chars) < length - len(present):
        chars.extend(rng.choice(usable))
    del chars[length - len(present) :]
    for c in present:
        chars.insert(rng.randrange(len(chars) + 1), c)
    return "".join(chars), letters


def make_task(tier: int, rng: random.Random, stitch_pieces: Sequence[str] | None = None) -> LetterTask:
    """Draw one task of ``tier`` from ``rng`` (see the module docstring for how). ``stitch_pieces``:
    build a random string (tiers 6-10) from these pieces instead of letter by letter (training data
    only: the tokenizer's long tokens, whose spelling the model has to learn; ``LetterCounting``)."""
    spec = TIERS[_check_tier(tier)]
    n = _n_letters(spec, rng)
    p = rng.uniform(*PRESENCE_RANGE)
    if spec.random_text:
        text, letters = _random_string_task(spec, n, p, rng, stitch_pieces or ())
    else:
        text, letters = _word_task(spec, n, p, rng)
    return LetterTask(text, tuple(letters), tuple(text.count(c) for c in letters), tier)


def question(task: LetterTask) -> str:
    """The user message, worded exactly as the seed's (including its "'a', and 'b'")."""
    if len(task.letters) == 1:
        return (
            f"How many {task.letters[0]}s are in the string {task.text}?\n\n"
            "Provide your answer in the format: <answer>{number}</answer>"
        )
    quoted = [f"'{c}'" for c in task.letters]
    letters_str = ", ".join(quoted[:-1]) + f", and {quoted[-1]}"
    example = "{" + ", ".join(f'"{c}": 0' for c in task.letters) + "}"
    return (
        f"Count the occurrences of the letters {letters_str} in the string {task.text}\n\n"
        f"Provide your answer as JSON in the format: <answer>{example}</answer>"
    )


def prompt_messages(task: LetterTask, system_prompt: bool = True) -> list[Message]:
    """The chat that asks ``task``: [system, user], or [user] without the system prompt."""
    user: Message = {"role": "user", "content": question(task)}
    return [{"role": "system", "content": SYSTEM_PROMPT}, user] if system_prompt else [user]


def answer_text(task: LetterTask) -> str:
    """The exact ``<answer>`` block that scores 1.0 on ``task``."""
    if len(task.letters) == 1:
        return f"<answer>{task.counts[0]}</answer>"
    return f"<answer>{json.dumps(task.expected)}</answer>"


def sft_chat(
    task: LetterTask,
    system_prompt: bool = True,
    cot: CotFormat = "spell",
    thinking: bool = False,
    pieces: Sequence[str] | None = None,
) -> list[Message]:
    """A worked example for SFT: the prompt plus an assistant reply that reasons in format ``cot``
    (see ``picorl.envs.traces``; ``pieces``: the tokenizer's cut of the string, for ``cot="pieces"``),
    then gives the answer block. With ``thinking`` the reasoning sits inside ``<think>...</think>``
    (chat templates with a thinking mode, e.g. Qwen3's)."""
    reasoning = trace(task, cot, pieces)
    if thinking:
        reply = f"<think>\n{reasoning}\n</think>\n\n{answer_text(task)}"
    else:
        reply = f"{reasoning}\n\n{answer_text(task)}"
    return prompt_messages(task, system_prompt) + [{"role": "assistant", "content": reply}]


def reasoning_chars(text: str) -> int:
    """Characters of reasoning in a reply: what comes before its final ``</think>`` if it thinks,
    else before its first ``<answer>`` (the whole reply if it has neither)."""
    final = final_answer_text(text)
    if final is None:  # thinking never ended: all of it is reasoning
        return len(text)
    thought = len(text) - len(final)
    if thought:
        return thought
    start = text.lower().find("<answer>")
    return len(text) if start < 0 else start


class LetterCounting(Env):
    """Single-turn letter counting. ``reset(seed)`` fixes the task, so k copies reset with one
    seed ask the same question (one GRPO group); a list of tiers picks the tier from the seed too.
    """

    max_turns = 1

    def __init__(
        self,
        difficulty: int | Sequence[int] = 1,
        reward_mode: RewardMode = "partial",
        system_prompt: bool = True,
        cot: CotFormat = "scan",
        thinking: bool = False,
        text_pieces: Callable[[str], list[str]] | None = None,
        stitch_pieces: Sequence[str] = (),
        stitch_fraction: float = 0.0,
    ) -> None:
        is_list = isinstance(difficulty, Sequence) and not isinstance(difficulty, str)
        tiers = list(difficulty) if is_list else [difficulty]
        if not tiers:
            raise ValueError("difficulty is an empty list; give a tier in 1..10 or a list of them")
        self.tiers = [_check_tier(t) for t in tiers]
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"unknown reward_mode {reward_mode!r}; use one of {REWARD_MODES}")
        self.reward_mode = reward_mode
        self.system_prompt = system_prompt
        if cot not in COT_FORMATS:
            raise ValueError(f"unknown reasoning format {cot!r}; use one of {', '.join(COT_FORMATS)}")
        self.cot = cot
        self.thinking = thinking
        # How the model's tokenizer cuts a string (the ``pieces`` format's demonstrations need it).
        self.text_pieces = text_pieces
        # Training data only (never the eval's): this share of the random strings is stitched from
        # these pieces (the tokenizer's long alphabetic tokens, which a small model misspells).
        if not 0.0 <= stitch_fraction <= 1.0:
            raise ValueError(f"stitch_fraction must be in [0, 1], got {stitch_fraction}")
        if stitch_fraction and not stitch_pieces:
            raise ValueError("stitch_fraction > 0 needs stitch_pieces (the strings to stitch from)")
        self.stitch_pieces = list(stitch_pieces)
        self.stitch_fraction = stitch_fraction
        self.task: LetterTask | None = None

    @property
    def chat_template_kwargs(self) -> dict[str, bool]:
        # Qwen3's template reads it (off: the prompt ends with an empty think block); templates
        # without a thinking mode ignore it.
        return {"enable_thinking": self.thinking}

    def task_for_seed(self, seed: int) -> LetterTask:
        """The task ``reset(seed)`` asks (no state change)."""
        seed = operator.index(seed)
        rng = random.Random(seed)
        tier = self.tiers[0] if len(self.tiers) == 1 else rng.choice(self.tiers)
        # whether to stitch comes from a stream of its own, so a seed's task is unchanged when it is not
        stitch = self.stitch_fraction and random.Random(f"stitch-{seed}").random() < self.stitch_fraction
        return make_task(tier, rng, self.stitch_pieces if stitch else None)

    def demonstration(self, seed: int) -> list[Message]:
        """The worked answer to the task of ``seed`` in this env's reasoning format (SFT data)."""
        task = self.task_for_seed(seed)
        pieces = self.text_pieces(task.text) if self.text_pieces and self.cot == "pieces" else None
        return sft_chat(task, self.system_prompt, self.cot, self.thinking, pieces)

    def reset(self, seed: int) -> list[Message]:
        self.task = self.task_for_seed(seed)
        return prompt_messages(self.task, self.system_prompt)

    def step(self, assistant_text: str) -> StepResult:
        if self.task is None:
            raise RuntimeError("LetterCounting.step called before reset(seed); reset first")
        reward, info = score(assistant_text, self.task, self.reward_mode)
        info["reasoning_chars"] = reasoning_chars(assistant_text)
        return StepResult(next_message=None, reward=reward, done=True, info=info)
