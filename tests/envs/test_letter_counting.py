"""The letter-counting tasks, prompts, env and SFT examples."""

import os
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from picorl.envs.letter_counting import (
    SYSTEM_PROMPT,
    TIERS,
    LetterCounting,
    LetterTask,
    answer_text,
    make_task,
    prompt_messages,
    question,
    sft_chat,
)
from picorl.envs.registry import ENV_NAMES, make_env
from picorl.envs.rewards import score
from picorl.envs.words import english_words

REPO_ROOT = Path(__file__).resolve().parents[2]
N_SAMPLES = 400
# tier: (english words?, min len, max len, P(multi), min letters when multi, max letters when multi)
TABLE = {
    1: (True, 3, 8, 0.0, 1, 1),
    2: (True, 5, 12, 0.5, 2, 2),
    3: (True, 8, 18, 0.6, 2, 3),
    4: (True, 10, 25, 0.8, 3, 5),
    5: (True, 15, 35, 0.9, 5, 8),
    6: (False, 40, 80, 1.0, 8, 12),
    7: (False, 80, 150, 1.0, 12, 20),
    8: (False, 150, 250, 1.0, 18, 26),
    9: (False, 250, 400, 1.0, 25, 26),
    10: (False, 400, 500, 1.0, 26, 26),
}


def sample(tier, n=N_SAMPLES):
    return [make_task(tier, random.Random(1000 * tier + i)) for i in range(n)]


@pytest.fixture(scope="module")
def word_set():
    return frozenset(english_words())


def test_word_list_is_sorted_lowercase_and_large():
    words = english_words()
    assert len(words) > 200_000
    assert list(words) == sorted(set(words))
    assert all(re.fullmatch("[a-z]+", w) for w in words)


@pytest.mark.parametrize("tier", range(1, 11))
def test_tier_statistics_match_the_table(tier, word_set):
    is_words, lo, hi, p_multi, min_k, max_k = TABLE[tier]
    tasks = sample(tier)
    lengths = [len(t.text) for t in tasks]
    assert all(lo <= n <= hi for n in lengths), (min(lengths), max(lengths))
    if is_words:
        assert all(t.text in word_set for t in tasks)
        assert len(set(lengths)) >= min(4, hi - lo)  # not one fixed length
    else:
        assert all(re.fullmatch("[a-z]+", t.text) for t in tasks)
        span = hi - lo
        assert min(lengths) <= lo + span // 10 and max(lengths) >= hi - span // 10

    multi = [t for t in tasks if len(t.letters) > 1]
    assert abs(len(multi) / len(tasks) - p_multi) < 0.08
    assert all(min_k <= len(t.letters) <= max_k for t in multi)
    if multi and max_k > min_k:  # the whole range is used
        assert {len(t.letters) for t in multi} == set(range(min_k, max_k + 1))

    for t in tasks:
        assert t.tier == tier
        assert len(set(t.letters)) == len(t.letters)
        assert all(re.fullmatch("[a-z]", c) for c in t.letters)
        assert t.counts == tuple(t.text.count(c) for c in t.letters)


@pytest.mark.parametrize("tier", range(1, 11))
def test_asked_letters_are_present_at_the_drawn_rate(tier):
    # p ~ U(0.3, 0.9) per question, so on average 60% of asked letters occur in the text. The
    # seed's random strings contained nearly every letter (~100% present); this must not.
    fractions = [sum(c > 0 for c in t.counts) / len(t.counts) for t in sample(tier)]
    assert abs(statistics.mean(fractions) - 0.6) < 0.06


def test_presence_rate_varies_per_question():
    # Tier 10 asks all 26 letters, so each question's present fraction estimates its own p.
    fractions = sorted(sum(c > 0 for c in t.counts) / 26 for t in sample(10, 300))
    assert fractions[30] < 0.45 and fractions[-30] > 0.75  # 10th / 90th percentiles of U(.3,.9) ~ .36 / .84
    assert fractions[0] > 0.05 and fractions[-1] < 1.0


def test_letter_cap_is_applied_after_the_draw():
    # tier 8 draws 18..30 and caps at 26, so 26 comes up 5/13 of the time; tier 9 15/16.
    tier8 = [len(t.letters) for t in sample(8)]
    assert abs(tier8.count(26) / len(tier8) - 5 / 13) < 0.08
    tier9 = [len(t.letters) for t in sample(9)]
    assert abs(tier9.count(26) / len(tier9) - 15 / 16) < 0.05


def test_tier_table_in_code_matches_the_spec():
    # letter ranges as printed in the seed's table, before the cap at 26
    printed = {1: (1, 1), 2: (2, 2), 3: (2, 3), 4: (3, 5), 5: (5, 8), 6: (8, 12), 7: (12, 20)}
    printed |= {8: (18, 30), 9: (25, 40), 10: (35, 50)}
    for tier, (is_words, lo, hi, p_multi, _, _) in TABLE.items():
        spec = TIERS[tier]
        assert (not spec.random_text, spec.min_len, spec.max_len, spec.p_multi) == (is_words, lo, hi, p_multi)
        assert (spec.min_letters, spec.max_letters) == printed[tier]


# --- prompts -----------------------------------------------------------------------------------


def test_prompts_are_worded_exactly_as_the_seed():
    single = LetterTask("strawberry", ("r",), (3,), tier=1)
    assert question(single) == (
        "How many rs are in the string strawberry?\n\nProvide your answer in the format: <answer>{number}</answer>"
    )
    multi = LetterTask("banana", ("a", "n", "z"), (3, 2, 0), tier=3)
    assert question(multi) == (
        "Count the occurrences of the letters 'a', 'n', and 'z' in the string banana\n\n"
        'Provide your answer as JSON in the format: <answer>{"a": 0, "n": 0, "z": 0}</answer>'
    )
    assert SYSTEM_PROMPT == (
        "You are a helpful assistant. Think step by step, then give your answer.\n"
        "Always wrap your final answer in <answer> tags."
    )
    assert prompt_messages(single) == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": question(single)},
    ]
    assert prompt_messages(single, system_prompt=False) == [{"role": "user", "content": question(single)}]


def test_task_validates_its_counts():
    with pytest.raises(ValueError, match="do not match"):
        LetterTask("banana", ("a",), (2,), tier=1)
    with pytest.raises(ValueError, match="distinct"):
        LetterTask("banana", ("a", "a"), (3, 3), tier=1)
    with pytest.raises(ValueError, match="a-z"):
        LetterTask("banana", ("A",), (0,), tier=1)


# --- env ---------------------------------------------------------------------------------------


def test_reset_is_deterministic_per_seed():
    a, b = LetterCounting(difficulty=4), LetterCounting(difficulty=4)
    assert a.reset(7) == b.reset(7) == a.reset(7)
    assert a.task == b.task
    prompts = {str(a.reset(seed)) for seed in range(50)}
    assert len(prompts) >= 48  # different seeds give different tasks


def test_tasks_do_not_depend_on_hash_randomization():
    # Seeds must give the same tasks in every process (no set iteration order leaking in).
    code = (
        "import random; from picorl.envs.letter_counting import make_task; "
        "print([make_task(t, random.Random(s)) for t in range(1, 11) for s in range(5)])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONHASHSEED": h},
        ).stdout
        for h in ("1", "2")
    }
    here = str([make_task(t, random.Random(s)) for t in range(1, 11) for s in range(5)]) + "\n"
    assert outputs == {here}


def test_a_list_of_tiers_draws_the_tier_from_the_seed():
    env = LetterCounting(difficulty=[3, 5, 6])
    tiers = [env.task_for_seed(s).tier for s in range(200)]
    assert set(tiers) == {3, 5, 6}
    assert [env.task_for_seed(s).tier for s in range(200)] == tiers
    assert LetterCounting([5]).reset(11) == LetterCounting(5).reset(11)


def test_step_scores_the_reply_and_ends_the_episode():
    env = LetterCounting(difficulty=6)
    messages = env.reset(3)
    assert [m["role"] for m in messages] == ["system", "user"]
    result = env.step("thinking...\n" + answer_text(env.task))
    assert (result.next_message, result.reward, result.done) == (None, 1.0, True)
    info = result.info
    required = {"correct", "format_ok", "tier", "n_letters", "n_letters_correct", "expected", "parsed"}
    assert required <= set(info)
    assert info["correct"] and info["tier"] == 6 and info["expected"] == env.task.expected
    assert info["n_letters"] == info["n_letters_correct"] == len(env.task.letters)

    wrong = {c: n + 1 for c, n in env.task.expected.items()}
    wrong_text = "<answer>" + str(wrong).replace("'", '"') + "</answer>"
    assert env.step(wrong_text).reward == pytest.approx(0.1)
    binary = LetterCounting(difficulty=6, reward_mode="binary", system_prompt=False)
    assert [m["role"] for m in binary.reset(3)] == ["user"]
    assert binary.step(wrong_text).reward == 0.0
    assert binary.step(answer_text(binary.task)).reward == 1.0


def test_bad_arguments_are_refused():
    for bad in (0, 11, "3", True, [], [2, 12]):
        with pytest.raises(ValueError, match="difficulty"):
            LetterCounting(difficulty=bad)
    with pytest.raises(ValueError, match="reward_mode"):
        LetterCounting(reward_mode="dense")
    with pytest.raises(RuntimeError, match="reset"):
        LetterCounting().step("<answer>1</answer>")


def test_registry_makes_envs_by_name():
    assert "letter_counting" in ENV_NAMES
    env = make_env("letter_counting", difficulty=[2, 3], reward_mode="binary")
    assert isinstance(env, LetterCounting) and env.tiers == [2, 3] and env.reward_mode == "binary"
    with pytest.raises(ValueError, match="letter_counting"):
        make_env("letter_countin")


# --- SFT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tier", range(1, 11))
def test_sft_chat_scores_one_on_every_tier(tier):
    for task in sample(tier, 40):
        chat = sft_chat(task)
        assert chat[:-1] == prompt_messages(task)
        reply = chat[-1]
        assert reply["role"] == "assistant"
        assert ", ".join(task.text) in reply["content"]  # the whole string, spelled out
        for c, n in zip(task.letters, task.counts):
            stated = re.findall(rf'"{c}" appears (\d+) times?', reply["content"])
            assert [int(x) for x in stated] == [n]
        for mode in ("partial", "binary"):
            r, info = score(reply["content"], task, mode)
            assert r == 1.0 and info["correct"]


LONG_PIECES = [
    "know", "ment", "ation", "tion", "ship", "ness", "ular", "ough", "ight", "ward", "stro", "plex",
]  # fmt: skip


def _absent(task: LetterTask) -> set[str]:
    return {c for c, n in zip(task.letters, task.counts) if n == 0}


@pytest.mark.parametrize("tier", [6, 7, 8, 9, 10])
def test_stitched_strings_ask_the_same_question_of_a_string_made_of_the_pieces(tier):
    spec, made_of_pieces = TIERS[tier], []
    for seed in range(60):
        plain = make_task(tier, random.Random(seed))
        stitched = make_task(tier, random.Random(seed), LONG_PIECES)
        assert stitched.letters == plain.letters and _absent(stitched) == _absent(plain)
        assert spec.min_len <= len(stitched.text) <= spec.max_len
        assert set(stitched.text) <= set("abcdefghijklmnopqrstuvwxyz")
        usable = [p for p in LONG_PIECES if _absent(plain).isdisjoint(p)]
        if usable:  # else the filler falls back to single letters
            made_of_pieces.append(sum(len(p) * stitched.text.count(p) for p in usable) / len(stitched.text))
    assert made_of_pieces and statistics.mean(made_of_pieces) > 0.6, made_of_pieces


def test_an_env_stitches_its_share_of_seeds_and_leaves_the_others_as_they_were():
    plain = LetterCounting(7)
    off = LetterCounting(7, stitch_pieces=LONG_PIECES, stitch_fraction=0.0)
    half = LetterCounting(7, stitch_pieces=LONG_PIECES, stitch_fraction=0.5)
    assert all(off.task_for_seed(s) == plain.task_for_seed(s) for s in range(100))
    changed = [half.task_for_seed(s) != plain.task_for_seed(s) for s in range(400)]
    assert 150 <= sum(changed) <= 250
    assert [half.task_for_seed(s) != plain.task_for_seed(s) for s in range(400)] == changed  # by seed
    words = LetterCounting(3, stitch_pieces=LONG_PIECES, stitch_fraction=1.0)  # word tiers: no strings
    assert all(words.task_for_seed(s) == LetterCounting(3).task_for_seed(s) for s in range(50))


@pytest.mark.parametrize("cot", ["scan", "pieces"])
def test_stitched_demonstrations_score_one(cot):
    def cut(text):  # a tokenizer that knows the long pieces
        out, i = [], 0
        while i < len(text):
            n = next((len(p) for p in LONG_PIECES if text.startswith(p, i)), 1)
            out.append(text[i : i + n])
            i += n
        return out

    env = LetterCounting([6, 8], reward_mode="binary", cot=cot, text_pieces=cut,
                         stitch_pieces=LONG_PIECES, stitch_fraction=1.0)  # fmt: skip
    for seed in range(20):
        reply = env.demonstration(seed)[-1]["content"]
        env.reset(seed)
        assert env.step(reply).reward == 1.0, reply[-300:]


def test_stitching_needs_pieces_and_a_fraction_in_range():
    with pytest.raises(ValueError, match="stitch_fraction must be in"):
        LetterCounting(6, stitch_pieces=LONG_PIECES, stitch_fraction=1.5)
    with pytest.raises(ValueError, match="needs stitch_pieces"):
        LetterCounting(6, stitch_fraction=0.5)
