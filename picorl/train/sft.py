"""Supervised fine-tuning on demonstrations the environment writes, before RL.

RL alone cannot invent a procedure the model never uses (footgun 8 of the war journal), so SFT
teaches one first: the environment writes a worked answer for any task seed (for letter counting, a
trace in the chosen reasoning format, ``picorl.envs.traces``), and the model is trained on the reply's
tokens only, never the prompt's. Demonstrations are free, so every step draws fresh ones: step ``s``
uses the task seeds ``SFT_SEEDS_START + s * batch_size + i``, which also makes a resumed SFT see exactly
the batches an uninterrupted one would.

Padding: the demonstrations of ``BUCKET_STEPS`` consecutive steps are drawn together, sorted by length
and cut into that many batches (then shuffled), so a batch holds demonstrations of similar length.
On tiers 6-8 lengths range from ~300 to ~1,500 tokens, and random batches were ~45% padding.

Tier curriculum (``curriculum=True``): the tiers are unlocked in the order given, evenly over the first
half of the steps, and each demonstration's tier is drawn uniformly from the unlocked ones.

Learning rate: linear warm-up over the first 5% of the steps, then a cosine decay to 10% of ``lr``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from picorl import distributed
from picorl.rollout.episodes import prompt_text
from picorl.runtime import SFT_SEEDS_START
from picorl.train.guard import FiniteStepGuard
from picorl.train.logprobs import chosen_token_logprobs
from picorl.train.policy import trainable_parameters
from picorl.train.step_options import adapter_input_casts_off
from picorl.train.step_options import autocast as bf16_autocast

BUCKET_STEPS = 16  # steps whose demonstrations are length-sorted together


@dataclass(frozen=True)
class Demonstration:
    """A tokenized demonstration: the full chat's ids and where the assistant's reply starts."""

    ids: list[int]
    reply_start: int
    tier: int


def demonstration_tokens(
    tokenizer, chats: list[list[dict[str, str]]], **template_kwargs
) -> list[tuple[list[int], int]]:
    """For each chat whose last message is the assistant's: its token ids and where that reply starts.
    One batched tokenizer call for all the chats: per-chat calls were most of an SFT bucket's CPU time
    (tier-8 traces run to ~1,700 tokens), and the fast tokenizer spreads a batch over the cores."""
    prompts = [prompt_text(tokenizer, chat[:-1], **template_kwargs) for chat in chats]
    fulls = [tokenizer.apply_chat_template(chat, tokenize=False, **template_kwargs) for chat in chats]
    encoded = tokenizer(prompts + fulls, add_special_tokens=False)["input_ids"]
    out = []
    for prompt, full in zip(encoded[: len(chats)], encoded[len(chats) :]):
        if full[: len(prompt)] != prompt:
            raise ValueError("the chat template renders the prompt differently with and without the reply")
        out.append((full, len(prompt)))
    return out


def sft_batch(examples: list[tuple[list[int], int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Right-padded ``input_ids`` (the forward needs no attention mask) and the mask of reply tokens
    (the targets)."""
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    targets = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        targets[row, start : len(ids)] = True
    return input_ids.to(device), targets.to(device)


def unlocked_tiers(tiers: list[int], step: int, steps: int, curriculum: bool) -> list[int]:
    """The tiers SFT step ``step`` (0-based) of ``steps`` draws from: all of them without a curriculum,
    else the first ``1 + floor(2 * len(tiers) * step / steps)`` (all from the half-way step on)."""
    if not curriculum or steps <= 0:
        return list(tiers)
    return list(tiers[: min(len(tiers), 1 + (2 * len(tiers) * step) // steps)])


def sft_lr_factor(step: int, steps: int) -> float:
    """Multiplier of the SFT learning rate at 0-based ``step``: warm-up, then cosine to 0.1."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class DemonstrationStream:
    """The batches of SFT steps, a pure function of the step: fresh demonstrations, length-bucketed.

    ``demonstrate([(tier, seed), ...])`` returns the tokenized chats (ids, reply start) of those tasks,
    in order (:func:`demonstration_tokens` of the env's demonstrations); a bucket's are asked for at once.
    """

    def __init__(
        self,
        demonstrate: Callable[[list[tuple[int, int]]], list[tuple[list[int], int]]],
        tiers: list[int],
        *,
        steps: int,
        batch_size: int,
        curriculum: bool,
    ) -> None:
        if not tiers:
            raise ValueError("SFT needs at least one tier to draw demonstrations from")
        self.demonstrate = demonstrate
        self.tiers = list(tiers)
        self.steps = steps
        self.batch_size = batch_size
        self.curriculum = curriculum
        self._bucket: tuple[int, list[list[Demonstration]]] | None = None
        self._builder: ThreadPoolExecutor | None = None  # made on first use
        self._ahead: tuple[tuple[int, int], Future] | None = None  # the next bucket's steps, being built

    def _task(self, step: int, i: int) -> tuple[int, int]:
        """(tier, seed) of demonstration ``i`` of 0-based step ``step``."""
        seed = SFT_SEEDS_START + step * self.batch_size + i
        tier = random.Random(seed).choice(unlocked_tiers(self.tiers, step, self.steps, self.curriculum))
        return tier, seed

    def _build_bucket(self, first: int, end: int) -> list[list[Demonstration]]:
        """The batches of steps ``first`` (a multiple of BUCKET_STEPS) to ``end`` - 1, length-bucketed."""
        members = range(first, end)
        tasks = [self._task(s, i) for s in members for i in range(self.batch_size)]
        pool = [Demonstration(ids, start, tier) for (ids, start), (tier, _) in zip(self.demonstrate(tasks), tasks)]
        pool.sort(key=lambda d: len(d.ids))
        batches = [pool[j : j + self.batch_size] for j in range(0, len(pool), self.batch_size)]
        random.Random(SFT_SEEDS_START + first).shuffle(batches)
        return batches

    def batch(self, step: int) -> list[Demonstration]:
        """The demonstrations of 0-based SFT step ``step``. The next bucket is built on a background
        thread meanwhile: writing and tokenizing 16 steps of tier-8 demonstrations took ~2.6 s, a
        fifth of the recipe's SFT time when the training loop waited for it (H200, 2026-12-02)."""
        first = step - step % BUCKET_STEPS
        if self._bucket is None or self._bucket[0] != first or step - first >= len(self._bucket[1]):
            end = min(first + BUCKET_STEPS, max(self.steps, step + 1))  # (past the last step: up to it)
            ahead, self._ahead = self._ahead, None
            batches = ahead[1].result() if ahead is not None and ahead[0] == (first, end) else None
            self._bucket = (first, batches or self._build_bucket(first, end))
            following = first + BUCKET_STEPS
            if following < self.steps:
                if self._builder is None:
                    self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sft-demonstrations")
                span = (following, min(following + BUCKET_STEPS, self.steps))
                self._ahead = (span, self._builder.submit(self._build_bucket, *span))
        return self._bucket[1][step - first]


def run_sft(
    model,
    tokenizer,
    stream: DemonstrationStream,
    *,
    lr: float,
    device,
    log: Callable[[int, dict[str, float]], None],
    micro_batch_tokens: int = 16_384,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    after_step: Callable[[int, torch.optim.Optimizer], None] | None = None,
    autocast: bool = False,
) -> float:
    """Train on the reply tokens of ``stream``'s batches for its steps; ``log(step, metrics)`` after
    each (1-based step; ``sft/loss``, ``sft/grad_norm``, ``sft/skipped_steps``, ``sft/tokens_per_s``,
    ``sft/lr``, ``sft/pad_fraction``, ``sft/mean_tier``). A batch larger than ``micro_batch_tokens``
    (padded) is split into micro-batches whose gradients add up to the batch's. A step whose gradient
    norm is not finite is skipped, and three in a row stop SFT (:mod:`picorl.train.guard`). Returns
    the last loss.

    Resuming: ``start_step`` steps already done and the optimizer's ``optimizer_state`` then; a step's
    batch depends on its number only, so a resumed SFT trains on what an uninterrupted one would.
    ``after_step(step, optimizer)`` runs after each step (the trainer's checkpoints and Ctrl-C).
    ``autocast``: the decoder's forward and backward under bf16 autocast, LoRA adapters included (as
    ``train_autocast`` does for RL's train phase; the optimizer keeps the fp32 adapter weights).

    Under torchrun every rank builds the same batch and trains on its contiguous slice of it; the loss
    is still divided by the whole batch's target tokens, and the gradients are summed over ranks, so the
    step is the one-process step."""
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    model.train()
    loss_value = float("nan")
    device = torch.device(device)
    fix = f"Lower --sft-lr (now {lr:g})"
    if autocast:
        fix += " or turn bf16 adapter math off (--no-sft-autocast)"
    guard = FiniteStepGuard("SFT", fix)
    with adapter_input_casts_off(model, autocast):
        for step in range(start_step, stream.steps):
            loss_value = _sft_step(model, tokenizer, stream, optimizer, params, guard, step, lr, device,
                                   micro_batch_tokens, autocast, log)  # fmt: skip
            if after_step is not None:
                after_step(step + 1, optimizer)
    return loss_value


def _sft_step(model, tokenizer, stream, optimizer, params, guard: FiniteStepGuard, step: int, lr: float, device,
              micro_batch_tokens: int, autocast: bool, log) -> float:
    """One step of :func:`run_sft`: its batch's micro-batches, the optimizer step, the log row; the loss."""
    t0 = time.perf_counter()
    for group in optimizer.param_groups:
        group["lr"] = lr * sft_lr_factor(step, stream.steps)
    batch = stream.batch(step)
    targets_total = sum(len(d.ids) - d.reply_start for d in batch)
    longest = max(len(d.ids) for d in batch)
    per_micro = max(1, micro_batch_tokens // longest)
    loss_sum = torch.zeros((), device=device)  # read once a step: a read per micro-batch waits for the GPU
    mine = distributed.shard(batch)  # the whole batch in one process
    for j in range(0, len(mine), per_micro):
        chunk = mine[j : j + per_micro]
        input_ids, targets = sft_batch(
            [(d.ids, d.reply_start) for d in chunk], tokenizer.pad_token_id, device
        )
        logprobs = chosen_token_logprobs(
            model, input_ids, None, targets, autocast=bf16_autocast(autocast, device)
        )
        loss = -(logprobs * targets).sum() / targets_total  # token mean over the whole batch
        loss.backward()
        loss_sum += loss.detach()
    distributed.all_reduce_gradients(params)  # both no-ops in one process
    grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)  # the same on every rank, after the all-reduce
    local_loss, norm = torch.stack([loss_sum, grad_norm.to(loss_sum.dtype)]).tolist()  # one wait for the GPU
    loss_value = distributed.all_reduce_sum(local_loss)
    guard.step(optimizer, norm, f"SFT step {step + 1}")
    optimizer.zero_grad(set_to_none=True)
    tokens = sum(len(d.ids) for d in batch)
    log(
        step + 1,
        {
            "sft/loss": loss_value,
            "sft/grad_norm": norm,
            "sft/skipped_steps": guard.skipped,
            "sft/lr": optimizer.param_groups[0]["lr"],
            "sft/tokens_per_s": tokens / (time.perf_counter() - t0),
            "sft/pad_fraction": 1 - tokens / (longest * len(batch)),
            "sft/mean_tier": sum(d.tier for d in batch) / len(batch),
        },
    )
    return loss_value
