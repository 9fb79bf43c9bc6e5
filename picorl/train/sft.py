"""Supervised warm-up on synthetic demonstrations from the environment, before RL.

The environment writes the demonstrations (for letter counting: spell the string out, state each
count, then the answer block), so the model learns the format and a counting procedure that RL can
then sharpen; RL alone cannot invent a procedure the model never uses (footgun 8).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from picorl.rollout.episodes import render_prompt
from picorl.train.logprobs import chosen_token_logprobs
from picorl.train.policy import trainable_parameters


def demonstration_tokens(tokenizer, chat: list[dict[str, str]]) -> tuple[list[int], int]:
    """Token ids of a chat whose last message is the assistant's, and where that reply starts."""
    prompt = render_prompt(tokenizer, chat[:-1])
    full_text = tokenizer.apply_chat_template(chat, tokenize=False)
    full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full[: len(prompt)] != prompt:
        raise ValueError("the chat template renders the prompt differently with and without the reply")
    return full, len(prompt)


def sft_batch(examples: list[tuple[list[int], int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    targets = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        targets[row, start : len(ids)] = True
    return input_ids.to(device), attention.to(device), targets.to(device)


def run_sft(
    model,
    tokenizer,
    chats: list[list[dict[str, str]]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    device,
    log,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    after_step: Callable[[int, torch.optim.Optimizer], None] | None = None,
) -> float:
    """Train on the assistant tokens of ``chats`` (cycled) for ``steps`` steps; ``log(step, loss)`` each
    step. Returns the last loss.

    Resuming: ``start_step`` steps already done and the optimizer's ``optimizer_state`` then; the batch of
    a step depends on its number only, so a resumed SFT trains on what an uninterrupted one would.
    ``after_step(step, optimizer)`` runs after each step (the trainer's checkpoints and Ctrl-C)."""
    examples = [demonstration_tokens(tokenizer, chat) for chat in chats]
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=lr, weight_decay=0.0)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    model.train()
    loss_value = float("nan")
    for step in range(start_step, steps):
        chosen = [examples[(step * batch_size + i) % len(examples)] for i in range(batch_size)]
        input_ids, attention, targets = sft_batch(chosen, tokenizer.pad_token_id, device)
        logprobs = chosen_token_logprobs(model, input_ids, attention, targets)
        loss = -(logprobs * targets).sum() / targets.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable_parameters(model), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        log(step + 1, loss_value)
        if after_step is not None:
            after_step(step + 1, optimizer)
    return loss_value
