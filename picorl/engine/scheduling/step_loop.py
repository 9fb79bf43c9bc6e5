"""The generate loop: schedule, run, sample, then read the sampled tokens back and check stops.

Reading the tokens back is the one point where the host waits for the GPU, and what the host does
after it (append 256 tokens, check stops, schedule, build the next inputs) left the GPU idle ~1 ms of
a ~21 ms decode step at batch 256. So a decode step is *run ahead*: step t+1 is scheduled and
launched before step t's tokens reach the host, which then handles them while the GPU runs t+1.

Running ahead needs step t+1's batch before step t's stops are known. It is the running sequences,
each one token longer, when nothing waits to be admitted (else the next step may be a prefill) and
the blocks they need are free (so nothing is preempted). The token step t will append is a
placeholder until it arrives; the model never reads it, since a decode step takes each sequence's
last token from the previous step's sampled ids on the device (``decode_inputs``). Sequences that
step t ends by length are known beforehand and left out; one that a stop token or string ends at
step t has a row in step t+1 that is dropped (its K/V write lands in blocks it frees afterwards, and
the stream runs that write before any later use of them). Results are those of the one-step-at-a-time
loop (greedy: identical tokens; sampling: a seed still reproduces a run, though a dropped row can
shift later draws).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

import torch

from picorl.engine.layers.sampler import Sampler
from picorl.engine.scheduling.scheduler import Batch, Scheduler
from picorl.engine.scheduling.sequence import Sequence, Status
from picorl.engine.scheduling.stopping import StopChecker

PLACEHOLDER = -1  # a token not known on the host yet; an embedding lookup of it would fail loudly

RunBatch = Callable[[Batch, "torch.Tensor | None"], torch.Tensor]


@dataclass
class Launched:
    """A step queued on the device whose sampled tokens the host has not taken yet."""

    batch: Batch
    indices: list[int]  # where in each target's token_ids its sampled token goes
    ids: torch.Tensor  # on the device: the next decode step's input ids
    ids_host: torch.Tensor  # filled by a non-blocking copy once ``ready``
    logprobs_host: torch.Tensor
    ready: torch.cuda.Event | None


def run_to_completion(
    scheduler: Scheduler, stop: StopChecker, sampler: Sampler, run_batch: RunBatch, run_ahead: bool
) -> tuple[list[Sequence], dict[str, float]]:
    """Step until every sequence has finished; returns them and step statistics (prefilled tokens;
    prefill / decode steps and their wall seconds: an iteration's time goes to the step whose tokens
    it takes, so the sums cover the whole loop, host work included)."""
    done: list[Sequence] = []
    closed: set[int] = set()  # id() of the sequences in ``done``: later rows of theirs are dropped
    stats = dict.fromkeys(("prefill_tokens", "prefill_steps", "prefill_s", "decode_steps", "decode_s"), 0)
    decoded = None  # ids sampled at the last decode step, on the device: the next step's inputs
    pending: Launched | None = None
    while pending is not None or not scheduler.is_finished():
        start = perf_counter()
        if pending is None:
            batch = scheduler.schedule()
            stats["prefill_tokens"] += batch.num_tokens if batch.is_prefill else 0
            pending = _launch(batch, decoded, sampler, run_batch)
        following = None
        if run_ahead and _can_run_ahead(pending, scheduler, stop):
            for seq in scheduler.running:
                seq.token_ids.append(PLACEHOLDER)
            following = _launch(scheduler.schedule(), pending.ids, sampler, run_batch)
        _take_tokens(pending, scheduler, stop, done, closed)
        if not pending.batch.is_prefill:
            decoded = pending.ids
        kind = "prefill" if pending.batch.is_prefill else "decode"
        stats[f"{kind}_steps"] += 1
        stats[f"{kind}_s"] += perf_counter() - start
        pending = following
    return done, stats


def _launch(batch: Batch, decoded: torch.Tensor | None, sampler: Sampler, run_batch: RunBatch) -> Launched:
    """Queue the step's forward pass, sampling and the copy of its tokens to the host."""
    indices = [len(seq) for seq in batch.targets]
    logits = run_batch(batch, decoded)
    if batch.rows != list(range(len(batch.seqs))):  # forked samples share their prompt's row
        logits = logits[torch.tensor(batch.rows, device=logits.device)]
    ids, logprobs = sampler(logits)
    # both to (pinned) host memory, then one event: waiting on it does not wait for later steps
    ids_host, logprobs_host = ids.to("cpu", non_blocking=True), logprobs.to("cpu", non_blocking=True)
    ready = None
    if ids.device.type == "cuda":
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(ids.device))
    return Launched(batch, indices, ids, ids_host, logprobs_host, ready)


def _can_run_ahead(pending: Launched, scheduler: Scheduler, stop: StopChecker) -> bool:
    """Whether the step after ``pending`` is a decode of the running sequences, one token on, that
    needs no preemption. Sequences that ``pending`` ends by length are finished here, first."""
    if pending.batch.is_prefill or scheduler.waiting:
        return False
    for seq in [s for s in scheduler.running if s.num_completion_tokens + 1 >= stop.max_tokens]:
        scheduler.finish(seq)  # its last token is still taken (and its stop checked) as usual
    blocks = scheduler.blocks
    need = sum(blocks.needs_block(s.block_table, len(s) + 1) for s in scheduler.running)
    return bool(scheduler.running) and need <= blocks.num_free


def _take_tokens(
    step: Launched, scheduler: Scheduler, stop: StopChecker, done: list[Sequence], closed: set[int]
) -> None:
    """Wait for the step's tokens, put them in place of their placeholders, and finish sequences."""
    if step.ready is not None:
        step.ready.synchronize()
    rows = zip(step.batch.targets, step.indices, step.ids_host.tolist(), step.logprobs_host.tolist())
    for seq, index, token, logprob in rows:
        if id(seq) in closed:  # ended at an earlier step; this row was run ahead for nothing
            continue
        if index < len(seq.token_ids):
            seq.token_ids[index] = token
        else:
            seq.token_ids.append(token)
        seq.logprobs.append(logprob)
        finished = stop(seq)
        if finished is not None:
            seq.finish_reason, seq.stop_reason = finished
            if seq.status is not Status.FINISHED:  # not already finished by ``_can_run_ahead``
                scheduler.finish(seq)
            done.append(seq)
            closed.add(id(seq))
