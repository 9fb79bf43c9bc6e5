import random

import pytest

from picorl.envs.letter_counting import LetterCounting, LetterTask, make_task, reasoning_chars
from picorl.envs.traces import COT_FORMATS, WINDOW, trace


def random_cut(text: str) -> list[str]:
    """Pieces of 1-3 characters, as a BPE tokenizer might cut a random string."""
    rng, pieces, i = random.Random(text), [], 0
    while i < len(text):
        n = rng.randint(1, 3)
        pieces.append(text[i : i + n])
        i += n
    return pieces


@pytest.mark.parametrize("cot", COT_FORMATS)
@pytest.mark.parametrize("thinking", [False, True])
@pytest.mark.parametrize("tier", range(1, 11))
def test_every_format_demonstration_scores_one(cot, thinking, tier):
    env = LetterCounting(tier, reward_mode="binary", cot=cot, thinking=thinking, text_pieces=random_cut)
    for seed in random.Random(tier).sample(range(10**9), 5):
        reply = env.demonstration(seed)[-1]["content"]
        env.reset(seed)
        result = env.step(reply)
        assert result.reward == 1.0 and result.info["correct"], (cot, tier, reply[-200:])
        assert ("<think>" in reply) == thinking


def test_scan_keeps_a_running_count_of_asked_letters_only():
    task = LetterTask("strawberry", ("r", "s"), (3, 1), 2)
    lines = trace(task, "scan").splitlines()
    assert lines[0] == "Counting r, s one character at a time:"
    assert lines[1:] == ["s=1", "t", "r=1", "a", "w", "b", "e", "r=2", "r=3", "y"]


def test_window_copies_each_block_before_its_characters():
    task = make_task(7, random.Random(3))
    lines = trace(task, "window").splitlines()[1:]
    blocks = [line[1:-1] for line in lines if line.startswith("[")]
    assert "".join(blocks) == task.text and all(len(b) == WINDOW for b in blocks[:-1])
    chars = [line[0] for line in lines if not line.startswith("[")]
    assert "".join(chars) == task.text


def test_window_copies_a_last_block_of_one_character_too():
    task = LetterTask("abcdefghi", ("a",), (1,), 2)
    assert trace(task, "window").splitlines()[-2:] == ["[i]", "i"]


def test_pieces_copies_each_multi_character_piece_before_its_characters():
    task = LetterTask("strawberry", ("r", "s"), (3, 1), 2)
    lines = trace(task, "pieces", ["str", "aw", "b", "erry"]).splitlines()[1:]
    assert lines == ["[str]", "s=1", "t", "r=1", "[aw]", "a", "w", "b", "[erry]", "e", "r=2", "r=3", "y"]


def test_pieces_must_spell_the_string_and_be_given():
    task = LetterTask("strawberry", ("r",), (3,), 1)
    with pytest.raises(ValueError, match="do not spell the task's string"):
        trace(task, "pieces", ["straw", "bery"])
    with pytest.raises(ValueError, match="build the environment with text_pieces"):
        LetterCounting(1, cot="pieces").demonstration(3)


def test_token_pieces_are_the_prompt_tokens_of_the_string():
    """The pieces are the tokens the model reads in its prompt, so a piece is copied token for token."""
    from picorl.config import Config, EnvConfig
    from picorl.envs.letter_counting import prompt_messages
    from picorl.models import load_model_and_tokenizer
    from picorl.runtime import env_factory, token_pieces

    tokenizer = load_model_and_tokenizer("tiny-qwen3")[1]
    pieces_of = token_pieces(tokenizer)
    for tier in (1, 6, 8):
        task = make_task(tier, random.Random(tier))
        pieces = pieces_of(task.text)
        assert "".join(pieces) == task.text and max(map(len, pieces)) > 1
        prompt = tokenizer.apply_chat_template(prompt_messages(task), tokenize=False)
        tokens = [tokenizer.decode([i]) for i in tokenizer(prompt, add_special_tokens=False)["input_ids"]]
        at = tokens.index(" " + pieces[0]) if (" " + pieces[0]) in tokens else -1
        assert tokens[at : at + len(pieces)] == [" " + pieces[0], *pieces[1:]], (pieces, tokens)
    env = env_factory(Config(env=EnvConfig(cot="pieces")), [6], tokenizer)()
    reply = env.demonstration(11)[-1]["content"]
    task = env.task_for_seed(11)
    assert [line[1:-1] for line in reply.splitlines() if line.startswith("[")] == [
        p for p in pieces_of(task.text) if len(p) > 1
    ]


def test_spell_is_the_seed_format():
    text = trace(LetterTask("strawberry", ("r",), (3,), 1), "spell")
    assert text.splitlines()[1] == "s, t, r, a, w, b, e, r, r, y"
    assert text.endswith('The letter "r" appears 3 times.')


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown reasoning format 'tally'"):
        LetterCounting(1, cot="tally")


def test_reasoning_length_is_what_comes_before_the_answer():
    assert reasoning_chars("abc<answer>3</answer>") == 3
    assert reasoning_chars("<think>\nxy\n</think>\n\n<answer>3</answer>") == len("<think>\nxy\n</think>")
    assert reasoning_chars("<think>still going") == len("<think>still going")
    assert reasoning_chars("no answer at all") == len("no answer at all")


def test_step_reports_reasoning_length():
    env = LetterCounting(1)
    env.reset(5)
    assert env.step("ab<answer>1</answer>").info["reasoning_chars"] == 2


def test_stitched_sft_strings_put_long_tokens_in_the_pieces_trace():
    """sft_stitch_fraction: the SFT envs build strings from the tokenizer's long alphabetic tokens, so
    the 'pieces' demonstrations copy and spell many more 4+ letter pieces than random strings give."""
    from picorl.config import Config, EnvConfig
    from picorl.models import load_model_and_tokenizer
    from picorl.runtime import env_factory, long_alphabetic_tokens

    tokenizer = load_model_and_tokenizer("tiny-qwen3")[1]
    long_tokens = long_alphabetic_tokens(tokenizer)
    assert len(long_tokens) > 1000 and long_tokens == sorted(long_tokens)
    assert all(len(t) >= 4 and t.isascii() and t.isalpha() and t.islower() for t in long_tokens)
    config = Config(env=EnvConfig(cot="pieces"))

    def long_pieces(env) -> int:
        replies = [env.demonstration(seed)[-1]["content"] for seed in range(30)]
        return sum(len(line) - 2 >= 4 for r in replies for line in r.splitlines() if line.startswith("["))

    plain = long_pieces(env_factory(config, [7], tokenizer)())
    stitched = long_pieces(env_factory(config, [7], tokenizer, stitch_fraction=1.0)())
    assert stitched > 5 * max(plain, 1), (plain, stitched)
    with pytest.raises(ValueError, match="pass its tokenizer"):
        env_factory(config, [7], None, stitch_fraction=0.5)


def test_rl_training_envs_stitch_and_eval_envs_never_do():
    from picorl.config import build_config
    from picorl.models import load_model_and_tokenizer
    from picorl.runtime import env_factory, train_env_factory

    tokenizer = load_model_and_tokenizer("tiny-qwen3")[1]
    config = build_config({"env": {"train_difficulty": [7], "train_stitch_fraction": 1.0}})
    train, plain = train_env_factory(config, tokenizer=tokenizer)(), env_factory(config)()
    changed = sum(train.task_for_seed(s) != plain.task_for_seed(s) for s in range(20))
    assert changed == 20  # every training string stitched; the eval's env_factory(config, [tier]) is plain
    off = build_config({"env": {"train_difficulty": [7]}})
    assert all(train_env_factory(off, tokenizer=tokenizer)().task_for_seed(s) == plain.task_for_seed(s)
               for s in range(20))  # fmt: skip
    with pytest.raises(ValueError, match="train_stitch_fraction must be in"):
        build_config({"env": {"train_stitch_fraction": -0.1}})
