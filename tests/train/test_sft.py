import random

import pytest

from picorl.config import ModelConfig
from picorl.envs import make_env
from picorl.models import load_model_and_tokenizer
from picorl.rollout.episodes import render_prompt
from picorl.train.policy import make_policy
from picorl.train.sft import (
    BUCKET_STEPS,
    DemonstrationStream,
    demonstration_tokens,
    run_sft,
    sft_lr_factor,
    unlocked_tiers,
)


def _stream(tokenizer, tiers, steps, batch_size, curriculum=False, cot="scan"):
    envs = {t: make_env("letter_counting", difficulty=[t], cot=cot) for t in tiers}

    def demonstrate(tasks):
        return demonstration_tokens(tokenizer, [envs[tier].demonstration(seed) for tier, seed in tasks])

    return DemonstrationStream(demonstrate, tiers, steps=steps, batch_size=batch_size, curriculum=curriculum)


def test_sft_lowers_the_loss_on_demonstrations():
    model, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    model = make_policy(model, ModelConfig(full_finetune=True, gradient_checkpointing=False))
    losses = []
    run_sft(model, tokenizer, _stream(tokenizer, [1], steps=12, batch_size=4), lr=1e-2, device="cpu",
            log=lambda step, m: losses.append(m["sft/loss"]))  # fmt: skip
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_micro_batches_give_the_batch_gradient():
    """Splitting a batch into micro-batches (sft_micro_batch_tokens) leaves the update unchanged."""
    weights = []
    for micro_tokens in (10**6, 1):  # one forward, or one sequence per forward
        model, tokenizer = load_model_and_tokenizer("tiny-qwen3")
        model = make_policy(model, ModelConfig(full_finetune=True, gradient_checkpointing=False))
        run_sft(model, tokenizer, _stream(tokenizer, [2], steps=2, batch_size=4), lr=1e-3, device="cpu",
                log=lambda *_: None, micro_batch_tokens=micro_tokens)  # fmt: skip
        weights.append(next(model.parameters()).detach().clone())
    assert (weights[0] - weights[1]).abs().max() < 1e-5


def test_sft_trains_on_the_assistant_reply_only():
    _, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    chat = make_env("letter_counting", difficulty=[2]).demonstration(3)
    [(ids, start)] = demonstration_tokens(tokenizer, [chat])
    assert ids[:start] == render_prompt(tokenizer, chat[:-1])
    reply = tokenizer.decode(ids[start:], skip_special_tokens=True)
    assert reply.strip() == chat[-1]["content"].strip()


def test_demonstrations_tokenize_in_one_batch_as_one_by_one():
    _, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    chats = [make_env("letter_counting", difficulty=[t]).demonstration(s) for t, s in ((1, 0), (6, 1), (3, 2))]
    assert demonstration_tokens(tokenizer, chats) == [demonstration_tokens(tokenizer, [c])[0] for c in chats]


def test_stream_is_a_function_of_the_step_and_draws_fresh_tasks():
    _, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    steps = BUCKET_STEPS + 5
    a = _stream(tokenizer, [1, 2, 6], steps=steps, batch_size=3)
    seen = [a.batch(s) for s in range(steps)]
    b = _stream(tokenizer, [1, 2, 6], steps=steps, batch_size=3)  # a resumed run asks from the middle
    assert [b.batch(s) for s in (steps - 1, BUCKET_STEPS + 1, 3)] == [seen[-1], seen[BUCKET_STEPS + 1], seen[3]]
    all_ids = [tuple(d.ids) for batch in seen for d in batch]
    assert len(set(all_ids)) == len(all_ids) == steps * 3  # no demonstration drawn twice


def test_the_next_bucket_is_built_in_the_background_with_the_same_batches():
    import threading

    _, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    steps = 2 * BUCKET_STEPS
    stream = _stream(tokenizer, [1, 2], steps=steps, batch_size=2)
    threads = []
    demonstrate = stream.demonstrate
    stream.demonstrate = lambda tasks: threads.append(threading.current_thread().name) or demonstrate(tasks)
    ahead = [stream.batch(s) for s in range(steps)]
    assert threads[0] == threading.current_thread().name and threads[1].startswith("sft-demonstrations")
    assert len(threads) == 2  # each bucket built once
    direct = _stream(tokenizer, [1, 2], steps=steps, batch_size=2)
    assert [direct.batch(s) for s in reversed(range(steps))] == ahead[::-1]


def test_length_bucketing_cuts_padding():
    _, tokenizer = load_model_and_tokenizer("tiny-qwen3")
    stream = _stream(tokenizer, [1, 6, 8], steps=BUCKET_STEPS, batch_size=8)
    batches = [stream.batch(s) for s in range(BUCKET_STEPS)]
    pooled = [d for b in batches for d in b]

    def pad(batches):
        return sum(max(len(d.ids) for d in b) * len(b) - sum(len(d.ids) for d in b) for b in batches)

    shuffled = pooled[:]
    random.Random(0).shuffle(shuffled)
    unsorted = [shuffled[i : i + 8] for i in range(0, len(shuffled), 8)]
    assert pad(batches) < 0.3 * pad(unsorted)


@pytest.mark.parametrize("steps", [1, 7, 100])
def test_curriculum_unlocks_tiers_in_order_by_half_time(steps):
    tiers = [1, 6, 7, 8]
    assert unlocked_tiers(tiers, 0, steps, curriculum=True) == [1]
    assert unlocked_tiers(tiers, steps // 2, steps, curriculum=True) == tiers or steps == 1
    sizes = [len(unlocked_tiers(tiers, s, steps, curriculum=True)) for s in range(steps)]
    assert sizes == sorted(sizes) and sizes[-1] == (4 if steps > 1 else 1)
    assert unlocked_tiers(tiers, 0, steps, curriculum=False) == tiers


def test_lr_warms_up_then_decays_to_a_tenth():
    steps = 200
    factors = [sft_lr_factor(s, steps) for s in range(steps)]
    peak = factors.index(max(factors))
    assert max(factors) == pytest.approx(1.0) and peak == steps // 20 - 1
    assert factors[:peak] == sorted(factors[:peak])
    assert factors[peak:] == sorted(factors[peak:], reverse=True)
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)


def test_autocast_sft_takes_the_fp32_step_within_bf16_rounding():
    """sft_autocast runs the adapters in bf16: the step it takes points where the fp32 one does, and
    PEFT's input casts are back on afterwards (the engine's eager adapters need them)."""
    import torch

    moves = []
    for autocast in (False, True):
        torch.manual_seed(0)
        model, tokenizer = load_model_and_tokenizer("tiny-qwen3")
        model = make_policy(model, ModelConfig(lora_rank=4, gradient_checkpointing=False))
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        run_sft(model, tokenizer, _stream(tokenizer, [2], steps=1, batch_size=4), lr=1e-3, device="cpu",
                log=lambda *_: None, autocast=autocast)  # fmt: skip
        moves.append(torch.cat([(p.detach() - before[n]).flatten() for n, p in model.named_parameters() if n in before]))
        assert all(getattr(m, "cast_input_dtype_enabled", True) for m in model.modules())
    assert moves[0].abs().max() > 0  # the step moved the adapters at all
    assert not torch.equal(moves[0], moves[1])  # and autocast did change the arithmetic
    assert torch.nn.functional.cosine_similarity(moves[0], moves[1], dim=0) > 0.99
