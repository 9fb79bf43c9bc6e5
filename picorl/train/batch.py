"""Pack episodes into padded micro-batches of exact token ids, with the loss mask on sampled tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from picorl.rollout.episodes import Episode


@dataclass
class MicroBatch:
    """Sequences ``prompt + completion``, padded on the right (so the forward needs no attention mask:
    :func:`picorl.train.logprobs.chosen_token_logprobs`); masks mark what the loss may touch."""

    index: list[int]  # positions of these episodes in the rollout batch
    input_ids: torch.Tensor  # [B, T]
    # [B, T] bool: tokens the loss trains: those the policy sampled (never prompt, template or padding),
    # or fewer of them (the update's ``credit`` option)
    action_mask: torch.Tensor
    engine_logprobs: torch.Tensor  # [B, T] fp32, 0 off the action mask
    advantages: torch.Tensor  # [B] fp32
    # [B]: the tokens each row's policy sampled, trained or not (the loss's length normalisers count these)
    sequence_lengths: torch.Tensor

    @property
    def num_tokens(self) -> int:
        """Tokens the policy sampled in this micro-batch (the loss may train fewer: ``action_mask``)."""
        return int(self.sequence_lengths.sum())


def make_micro_batches(
    episodes: list[Episode],
    advantages: torch.Tensor,
    micro_batch_size: int,
    pad_id: int,
    device: torch.device,
    include: list[bool] | None = None,
    max_tokens: int | None = None,
    loss_masks: list[list[bool]] | None = None,
) -> list[MicroBatch]:
    """Split the episodes (those with ``include`` True) into micro-batches, similar lengths together
    so little compute goes to padding. A truncated episode keeps exactly the tokens it sampled: no
    end-of-turn token is invented for it (the trainer must score exactly the ids the engine sampled).

    With ``max_tokens`` a micro-batch holds as many sequences as fit in that many padded tokens
    (rows x its longest row; a longer sequence still gets one of its own) and ``micro_batch_size`` is
    not used. How the batch is split never changes the loss: its normalisers count the whole batch.

    ``loss_masks`` (one per episode, over its completion ids) replace the episodes' action masks as
    the tokens the loss trains (:func:`picorl.algos.credit.credited_tokens`)."""
    chosen = [i for i in range(len(episodes)) if include is None or include[i]]
    length = [len(e.prompt_ids) + len(e.completion_ids) for e in episodes]
    chosen.sort(key=lambda i: length[i])
    groups = _by_tokens(chosen, length, max_tokens) if max_tokens else [
        chosen[start : start + micro_batch_size] for start in range(0, len(chosen), micro_batch_size)
    ]  # fmt: skip
    batches = []
    for index in groups:
        masks = None if loss_masks is None else [loss_masks[i] for i in index]
        batches.append(_pack([episodes[i] for i in index], index, advantages[index], pad_id, device, masks))
    return batches


def _by_tokens(chosen: list[int], length: list[int], max_tokens: int) -> list[list[int]]:
    """Consecutive runs of ``chosen`` (sorted by length, so the newest row is the longest) whose
    padded size stays within ``max_tokens``."""
    groups: list[list[int]] = []
    for i in chosen:
        if groups and (len(groups[-1]) + 1) * length[i] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _pack(
    episodes: list[Episode],
    index: list[int],
    advantages,
    pad_id: int,
    device,
    masks: list[list[bool]] | None = None,
) -> MicroBatch:
    """One micro-batch of ``episodes``; ``masks``: the loss's tokens of each (default: its action mask)."""
    masks = masks if masks is not None else [e.action_mask for e in episodes]
    length = max(len(e.prompt_ids) + len(e.completion_ids) for e in episodes)
    shape = (len(episodes), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    action_mask = torch.zeros(shape, dtype=torch.bool)
    engine_logprobs = torch.zeros(shape, dtype=torch.float32)
    for row, (e, mask) in enumerate(zip(episodes, masks)):
        p, c = len(e.prompt_ids), len(e.completion_ids)
        input_ids[row, : p + c] = torch.tensor(e.prompt_ids + e.completion_ids)
        action_mask[row, p : p + c] = torch.tensor(mask, dtype=torch.bool)
        engine_logprobs[row, p : p + c] = torch.tensor(e.engine_logprobs, dtype=torch.float32)
    return MicroBatch(
        index=index,
        input_ids=input_ids.to(device),
        action_mask=action_mask.to(device),
        engine_logprobs=engine_logprobs.to(device),
        advantages=advantages.to(device=device, dtype=torch.float32),
        sequence_lengths=torch.tensor([e.num_generated for e in episodes], device=device),
    )
