"""Reward parsing and scoring, every value hand-worked from the rules in picorl/envs/rewards.py."""

import pytest

from picorl.envs.letter_counting import LetterTask
from picorl.envs.rewards import parse_answer, score

STRAWBERRY = LetterTask("strawberry", ("r",), (3,), tier=1)
APPLE = LetterTask("apple", ("a",), (1,), tier=1)  # count 1, so `true` would equal it in Python
BANANA = LetterTask("banana", ("a", "n", "b", "z"), (3, 2, 1, 0), tier=4)
RIGHT = '{"a": 3, "n": 2, "b": 1, "z": 0}'


def reward(text, task, mode="partial"):
    return score(text, task, mode)[0]


# --- one letter ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "<answer>3</answer>",
        "There are three r's.\n<answer>3</answer>",
        "<answer> 3 </answer>",
        "<answer>\n3\n</answer>",
        "<ANSWER>3</Answer>",  # tags are case-insensitive, as in the seed
        "<answer>3</answer> Hope that helps!",
    ],
)
def test_single_letter_exact_scores_one(text):
    r, info = score(text, STRAWBERRY)
    assert r == 1.0
    assert info["correct"] and info["format_ok"] and info["keys_ok"]
    assert info["parsed"] == {"r": 3} and info["expected"] == {"r": 3}
    assert info["n_letters"] == 1 and info["n_letters_correct"] == 1 and info["tier"] == 1


@pytest.mark.parametrize("text", ["<answer>2</answer>", "<answer>0</answer>", "<answer>30</answer>"])
def test_single_letter_wrong_count_scores_point_one(text):
    r, info = score(text, STRAWBERRY)
    assert r == pytest.approx(0.1, abs=1e-12)
    assert info["format_ok"] and not info["correct"] and info["n_letters_correct"] == 0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "3",
        "The answer is 3.",
        "<answer>3",  # never closed
        "3</answer>",
        "</answer>3<answer>",  # wrong order
        "<answer></answer>",
        "<answer>3</answer><answer>3</answer>",  # two blocks, even agreeing ones
        "<answer>3</answer>\n<answer>2</answer>",
        "<answer>3.0</answer>",
        "<answer>2.5</answer>",
        "<answer>3e0</answer>",
        '<answer>"3"</answer>',
        "<answer>-3</answer>",
        "<answer>03</answer>",
        "<answer>NaN</answer>",
        "<answer>three</answer>",
        "<answer>3 r's</answer>",
        '<answer>{"r": 3}</answer>',  # one letter wants a bare integer, as the prompt says
        "<answer>[3]</answer>",
    ],
)
def test_single_letter_unparseable_scores_zero(text):
    r, info = score(text, STRAWBERRY)
    assert r == 0.0
    assert not info["format_ok"] and not info["correct"] and info["parsed"] is None


def test_json_booleans_are_not_counts():
    assert parse_answer("<answer>true</answer>", APPLE.letters) is None
    assert reward("<answer>true</answer>", APPLE) == 0.0
    assert reward("<answer>1</answer>", APPLE) == 1.0
    bool_for_b = '<answer>{"a": 3, "n": 2, "b": true, "z": false}</answer>'
    assert parse_answer(bool_for_b, BANANA.letters) is None
    assert reward(bool_for_b, BANANA) == 0.0


# --- several letters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"<answer>{RIGHT}</answer>",
        '<answer>{"z": 0, "b": 1, "n": 2, "a": 3}</answer>',  # key order is free
        '<answer>\n{"a": 3,\n "n": 2,\n "b": 1,\n "z": 0}\n</answer>',  # multi-line
        'Counting...\n<answer>\n{\n  "a": 3,\n  "n": 2,\n  "b": 1,\n  "z": 0\n}\n</answer>\n',
    ],
)
def test_multi_letter_exact_scores_one(text):
    r, info = score(text, BANANA)
    assert r == 1.0
    assert info["correct"] and info["format_ok"] and info["keys_ok"]
    assert info["n_letters"] == 4 and info["n_letters_correct"] == 4
    assert info["parsed"] == {"a": 3, "n": 2, "b": 1, "z": 0}


@pytest.mark.parametrize(
    "answer, n_right, expected_reward",
    [
        ('{"a": 3, "n": 2, "b": 1, "z": 5}', 3, 0.1 + 0.9 * 3 / 4),  # 0.775
        ('{"a": 3, "n": 9, "b": 9, "z": 9}', 1, 0.1 + 0.9 * 1 / 4),  # 0.325
        ('{"a": 1, "n": 1, "b": 2, "z": 1}', 0, 0.1),
        ('{"a": 3, "n": 2, "b": 0, "z": 0}', 3, 0.775),  # some zeros, not all: normal credit
    ],
)
def test_multi_letter_partial_credit(answer, n_right, expected_reward):
    r, info = score(f"<answer>{answer}</answer>", BANANA)
    assert r == pytest.approx(expected_reward, abs=1e-12)
    assert info["format_ok"] and info["keys_ok"] and not info["correct"]
    assert info["n_letters_correct"] == n_right


def test_copied_all_zero_template_earns_no_per_letter_credit():
    template = '<answer>{"a": 0, "n": 0, "b": 0, "z": 0}</answer>'  # the prompt's own example
    r, info = score(template, BANANA)
    # Without the rule it would earn 0.1 + 0.9 * 1/4 for the absent "z".
    assert r == pytest.approx(0.1, abs=1e-12)
    assert info["format_ok"] and info["keys_ok"] and info["n_letters_correct"] == 1
    # ...unless every asked letter really is absent: then all zeros is the right answer.
    absent = LetterTask("banana", ("x", "y"), (0, 0), tier=2)
    assert reward('<answer>{"x": 0, "y": 0}</answer>', absent) == 1.0


@pytest.mark.parametrize(
    "answer",
    [
        '{"a": 0, "n": 0, "b": 0, "z": 0, "q": 0}',  # all-zero template with an extra key
        '{"a": 0, "n": 0, "b": 0}',  # ... with a missing key (z really is 0)
        '{"a": 3, "n": 2, "b": 1}',  # right values, "z" missing
        '{"a": 3, "n": 2, "b": 1, "z": 0, "q": 0}',  # right values plus an extra key
        '{"A": 3, "N": 2, "B": 1, "Z": 0}',  # keys must be the asked letters exactly
        "{}",
    ],
)
def test_wrong_key_set_scores_point_one(answer):
    r, info = score(f"<answer>{answer}</answer>", BANANA)
    assert r == pytest.approx(0.1, abs=1e-12)
    assert info["format_ok"] and not info["keys_ok"] and not info["correct"]


@pytest.mark.parametrize(
    "answer",
    [
        '{"a": 3.0, "n": 2, "b": 1, "z": 0}',
        '{"a": 2.5, "n": 2, "b": 1, "z": 0}',
        '{"a": "3", "n": 2, "b": 1, "z": 0}',
        '{"a": -3, "n": 2, "b": 1, "z": 0}',
        '{"a": null, "n": 2, "b": 1, "z": 0}',
        '{"a": [3], "n": 2, "b": 1, "z": 0}',
        '{"a": 3, "a": 3, "n": 2, "b": 1, "z": 0}',  # duplicate key
        '{"a": 3, "n": 2, "b": 1, "z": 0,}',  # not JSON
        "{'a': 3, 'n': 2, 'b': 1, 'z': 0}",  # Python, not JSON
        '```json\n{"a": 3, "n": 2, "b": 1, "z": 0}\n```',
        "3",  # a bare number where an object is asked
        '[{"a": 3}]',
    ],
)
def test_multi_letter_unparseable_scores_zero(answer):
    r, info = score(f"<answer>{answer}</answer>", BANANA)
    assert r == 0.0
    assert not info["format_ok"] and info["parsed"] is None and info["n_letters_correct"] == 0


def test_two_answer_blocks_score_zero():
    assert reward(f"<answer>{RIGHT}</answer>\n<answer>{RIGHT}</answer>", BANANA) == 0.0
    assert reward(f"<answer>{RIGHT}</answer> or <answer>3</answer>", BANANA) == 0.0
    assert reward(f"<answer>{RIGHT}</answer><answer>", BANANA) == 0.0  # a stray extra tag


# --- thinking ----------------------------------------------------------------------------------


def test_answer_after_think_block_is_parsed():
    text = "<think>\nr at 3, 8, 9 -> 3\n</think>\n\n<answer>3</answer>"
    assert reward(text, STRAWBERRY) == 1.0
    # the chat template may open <think> itself, so the reply starts inside it
    assert reward("r, r, r ... that is 3\n</think>\n<answer>3</answer>", STRAWBERRY) == 1.0
    assert reward("<think>a</think><think>b</think><answer>3</answer>", STRAWBERRY) == 1.0


def test_answer_inside_think_block_does_not_count():
    # Only the final answer counts: the draft inside <think> is neither scored nor a second block.
    text = "<think>maybe <answer>3</answer>? no...</think>\n<answer>2</answer>"
    r, info = score(text, STRAWBERRY)
    assert r == pytest.approx(0.1, abs=1e-12) and info["parsed"] == {"r": 2}
    multi = (
        f"<think>draft <answer>{RIGHT}</answer></think>" + '<answer>{"a": 3, "n": 2, "b": 1, "z": 1}</answer>'
    )
    assert reward(multi, BANANA) == pytest.approx(0.775, abs=1e-12)
    assert reward("<think>it is <answer>3</answer></think> I am not sure.", STRAWBERRY) == 0.0


def test_unfinished_thinking_has_no_answer():
    assert reward("<think>counting... <answer>3</answer>", STRAWBERRY) == 0.0
    assert reward("<think>a</think><answer>3</answer><think>more", STRAWBERRY) == 0.0


# --- binary mode, errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, task, expected",
    [
        ("<answer>3</answer>", STRAWBERRY, 1.0),
        ("<answer>2</answer>", STRAWBERRY, 0.0),
        ("no answer", STRAWBERRY, 0.0),
        (f"<answer>{RIGHT}</answer>", BANANA, 1.0),
        ('<answer>{"a": 3, "n": 2, "b": 1, "z": 5}</answer>', BANANA, 0.0),
        ('<answer>{"a": 3, "n": 2, "b": 1}</answer>', BANANA, 0.0),
        ('<answer>{"a": 0, "n": 0, "b": 0, "z": 0}</answer>', BANANA, 0.0),
    ],
)
def test_binary_mode(text, task, expected):
    r, info = score(text, task, "binary")
    assert r == expected
    assert info["correct"] == (expected == 1.0)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="reward mode"):
        score("<answer>3</answer>", STRAWBERRY, "shaped")


def test_parse_answer_shapes():
    assert parse_answer("<answer>3</answer>", ("r",)) == {"r": 3}
    assert parse_answer('<answer>{"x": 1, "y": 2}</answer>', ("a", "b")) == {"x": 1, "y": 2}
    assert parse_answer("<answer>3</answer>", ("a", "b")) is None
    with pytest.raises(ValueError, match="at least one letter"):
        parse_answer("<answer>3</answer>", ())
