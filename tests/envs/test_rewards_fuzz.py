"""Model text never crashes scoring: a fuzz corpus of nesting, size, unicode and tag abuse.

Every reply must score a float in [0, 1] with an info dict; replies a parser chokes on (a thousand
nested ``[`` raised RecursionError before) score 0 with the reason in ``info["parse_error"]``.
"""

import random

import pytest

from picorl.envs.letter_counting import LetterCounting, LetterTask
from picorl.envs.rewards import score

STRAWBERRY = LetterTask("strawberry", ("r",), (3,), tier=1)
BANANA = LetterTask("banana", ("a", "n", "b", "z"), (3, 2, 1, 0), tier=4)


def wrap(body: str) -> str:
    return f"<answer>{body}</answer>"


NESTING = [
    wrap("[" * 1000),
    wrap("[" * 100_000),
    wrap("[" * 1000 + "]" * 1000),
    wrap('{"a":' * 1000 + "1" + "}" * 1000),
    wrap("[{" * 5000),
    wrap('{"a": ' + "[" * 3000 + "3" + "]" * 3000 + "}"),
    "<think>" * 1000 + "</think>" * 1000 + wrap("3"),
    "<answer>" * 1000 + "3" + "</answer>" * 1000,
]
SIZE = [
    wrap("9" * 5000),  # beyond Python's int-string digit limit
    wrap("1" * 100_000),
    wrap('{"a": ' + "9" * 10_000 + "}"),
    "x" * 2_000_000 + wrap("3"),
    wrap(" " * 1_000_000 + "3"),
    wrap("3") * 10_000,
    wrap('{"a": 3' + ', "a": 3' * 10_000 + "}"),
    wrap("1e999999"),
    wrap("-" * 10_000 + "1"),
]
UNICODE = [
    wrap("\ud800"),  # a lone surrogate
    wrap('"\\ud800"'),
    wrap('{"\\ud800": 3}'),
    wrap("\x00"),
    wrap("３"),  # fullwidth digit
    wrap("٣"),  # Arabic-Indic digit
    wrap("3\u0301"),  # combining accent
    wrap("\u202e3"),  # right-to-left override
    wrap('{"a": 3, "n": 2, "b": 1, "z": 0}'.replace("a", "а")),  # Cyrillic a
    "🍓" * 10_000 + wrap("3"),
    wrap("\ufeff3"),
    "<ａｎｓｗｅｒ>3</ａｎｓｗｅｒ>",
]
TAGS = [
    "<answer><answer>3</answer></answer>",
    "<answer>3</answer></answer>",
    "</think>" + wrap("3") + "<think>",
    "<think>" + wrap("3"),
    "<answer>3<think></answer>",
    "<ANSWER>3</answer>",
    "<answer\n>3</answer>",
    "<answer>" + "</answer>" * 5,
    "</think>" * 10_000 + wrap("3"),
    wrap("NaN"),
    wrap("Infinity"),
    wrap("-Infinity"),
    wrap('{"a": NaN}'),
    wrap('{"a": true, "n": null, "b": [], "z": {}}'),
    wrap('"3"'),
    wrap("0x3"),
]
CORPUS = NESTING + SIZE + UNICODE + TAGS

FRAGMENTS = [
    "[", "]", "{", "}", '"', ":", ",", "3", "0", "-", ".", "e", "9" * 50, "<answer>", "</answer>",
    "<think>", "</think>", "\\u", "\\ud800", "\ud800", "\x00", "🍓", "NaN", "true", " ", "\n", '"a"',
]  # fmt: skip


def random_replies(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    replies = []
    for _ in range(n):
        parts = [rng.choice(FRAGMENTS) * rng.choice((1, 1, 2, 50, 2000)) for _ in range(rng.randint(1, 12))]
        replies.append(wrap("".join(parts)) if rng.random() < 0.7 else "".join(parts))
    return replies


def assert_scored(text: str, task: LetterTask, mode: str) -> dict:
    reward, info = score(text, task, mode)
    assert isinstance(reward, float) and 0.0 <= reward <= 1.0
    assert isinstance(info, dict) and isinstance(info["correct"], bool)
    if "parse_error" in info:
        assert reward == 0.0 and not info["format_ok"] and not info["correct"]
        assert isinstance(info["parse_error"], str) and len(info["parse_error"]) < 300
    return info


@pytest.mark.parametrize("mode", ["partial", "binary"])
@pytest.mark.parametrize("task", [STRAWBERRY, BANANA], ids=["one-letter", "four-letters"])
def test_corpus_never_raises(task, mode):
    for text in CORPUS:
        assert_scored(text, task, mode)


def test_random_replies_never_raise():
    for text in random_replies(400):
        for task in (STRAWBERRY, BANANA):
            assert_scored(text, task, "partial")


def test_deep_nesting_is_a_zero_reward_with_a_reason():
    """The issue's repro: ~506 SmolLM2 tokens of `[` raised RecursionError out of score(). Deeper than
    the interpreter's recursion limit, which torch.compile raises to 2000 in a process that compiled
    (an earlier test), so the repro does not depend on the test order."""
    import sys

    reward, info = score(wrap("[" * (2 * sys.getrecursionlimit())), STRAWBERRY)
    assert reward == 0.0 and not info["format_ok"]
    assert info["parse_error"].startswith("RecursionError")


def test_the_environment_never_raises_on_model_text():
    env = LetterCounting(difficulty=[1, 4, 8])
    for i, text in enumerate(CORPUS):
        env.reset(i)
        result = env.step(text)
        assert result.done and 0.0 <= result.reward <= 1.0


def test_a_right_answer_still_scores_after_the_guard():
    assert score(wrap("3"), STRAWBERRY) == (1.0, score(wrap("3"), STRAWBERRY)[1])
    assert "parse_error" not in score(wrap("3"), STRAWBERRY)[1]
