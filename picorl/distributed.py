"""Data parallelism under ``torchrun``: the process group, who does what, and the reductions.

``torchrun --nproc-per-node N -m picorl.cli train ...`` starts N processes (ranks) with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment. :func:`init` joins them into one process group
(``gloo`` on CPU, ``nccl`` on CUDA, each rank on ``cuda:LOCAL_RANK``). Every rank holds the whole model,
its own rollout engine and KV cache, rolls out its share of the update's groups and computes its
gradients; :func:`all_reduce_gradients` sums them, so every rank takes the same optimizer step.

When ``WORLD_SIZE`` is unset or 1 nothing here does anything: each helper returns its input (or the
one-element answer), so the one-process path runs exactly the code it ran before data parallelism.
See docs/distributed.md for the data flow, the seeds and the global batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# How a metric is combined across ranks (see :func:`combine_metrics`).
SUM, MEAN, MAX, MIN, FIRST = "sum", "mean", "max", "min", "first"


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: str = "auto") -> bool:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; returns whether this is a data-parallel run.

    ``device`` is the run's ``--device``: ``nccl`` when it lands on CUDA (and this rank's current CUDA
    device becomes ``cuda:LOCAL_RANK``), else ``gloo``. Calling it again, or without torchrun, is a no-op.
    """
    if env_world_size() <= 1:
        return False
    if dist.is_initialized():
        return True
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    return True


def active() -> bool:
    """True in a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    """This rank's index on its node (its GPU), as torchrun sets ``LOCAL_RANK``."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one rank that writes the run folder and prints."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """``device`` for this rank: a CUDA device becomes ``cuda:LOCAL_RANK`` in a data-parallel run."""
    if active() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def rank_seed(seed: int) -> int:
    """The global-RNG seed of this rank: ``seed`` on rank 0 (so it is the one-process run's stream) and
    ``seed + 1_000_003 * rank`` on the others (dropout and any unseeded draw differ between ranks)."""
    return seed + 1_000_003 * rank()


def barrier() -> None:
    if active():
        dist.barrier()


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 first, then on the other ranks (which may then read what rank 0 wrote or fetched).

    If rank 0's call raises, the other ranks raise a ValueError with its message instead of waiting for
    a rank that is gone (so a refused ``--resume`` says why once and ends every rank)."""
    if not active():
        return fn()
    error = None
    result = None
    if is_main():
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - passed on to the others, then re-raised here
            error = e
    failure = broadcast_object(f"{type(error).__name__}: {error}" if error is not None else None)
    if error is not None:
        raise error
    if failure is not None:
        raise ValueError(f"rank 0 failed: {failure}")
    return result if is_main() else fn()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled; for small things such as a list of metrics)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0; None on the others (``[obj]`` in one process)."""
    if not active():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def shard(items: Sequence[T], of_rank: int | None = None, ranks: int | None = None) -> list[T]:
    """The contiguous slice of ``items`` that a rank takes (sizes differ by at most one, lower ranks the
    larger): concatenating every rank's slice in rank order gives ``items`` back."""
    r = rank() if of_rank is None else of_rank
    n = world_size() if ranks is None else ranks
    base, extra = divmod(len(items), n)
    start = r * base + min(r, extra)
    return list(items[start : start + base + (1 if r < extra else 0)])


def all_reduce_sum(value: float) -> float:
    """The sum of ``value`` over ranks (in fp64, so integer counts stay exact)."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return float(t.item())


def all_reduce_min(value: float) -> float:
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any (Ctrl-C reaches ranks at different moments; they must
    agree where to stop, or one would wait forever in a collective the others never join)."""
    return all_reduce_sum(1.0 if flag else 0.0) > 0 if active() else flag


def all_reduce_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over ranks, in place.

    A plain all-reduce after backward rather than wrapping the model in DDP: the rollout engine runs the
    policy's own modules (no weight copy, no sync), which a DDP wrapper would sit in front of; the LoRA
    gradients are small, so overlapping their reduction with backward would save little; and micro-batch
    accumulation, PPO's minibatches and the loss normaliser stay exactly as in the one-process code.
    Losses are already divided by the GLOBAL normaliser, so the sum (not a mean) is the global gradient.
    A parameter without a gradient on this rank (it had no micro-batch) contributes zeros. The gradients
    travel as one flat buffer per dtype: one collective instead of one per LoRA matrix."""
    if not active():
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def broadcast_parameters(params: Sequence[torch.nn.Parameter]) -> None:
    """Rank 0's values of ``params`` on every rank (the ranks must start from one model)."""
    if not active():
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)


def combine_metrics(parts: Sequence[tuple[float, dict[str, float]]], rules: dict[str, str]) -> dict[str, float]:
    """Combine ``(weight, metrics)`` of each rank into one row.

    ``rules`` maps a key, or a prefix ending in ``/``, to ``sum``, ``max``, ``min``, ``first`` (every
    rank has the same value) or ``mean``; a key named nowhere follows ``rules["*"]``, else is a ``mean``
    weighted by each rank's weight (its count of episodes or sequences). A key some ranks lack is combined over the ranks that have it.
    The exact key wins over a prefix; the longest prefix over a shorter one."""
    keys: list[str] = []
    for _, metrics in parts:
        keys += [k for k in metrics if k not in keys]
    out: dict[str, float] = {}
    for key in keys:
        have = [(w, m[key]) for w, m in parts if key in m and m[key] is not None]
        if not have:
            continue
        rule = rule_for(key, rules)
        values = [v for _, v in have]
        if rule == SUM:
            out[key] = sum(values)
        elif rule == MAX:
            out[key] = max(values)
        elif rule == MIN:
            out[key] = min(values)
        elif rule == FIRST:
            out[key] = values[0]
        else:
            total = sum(w for w, _ in have)
            out[key] = sum(w * v for w, v in have) / total if total else sum(values) / len(values)
    return out


def rule_for(key: str, rules: dict[str, str]) -> str:
    if key in rules:
        return rules[key]
    prefixes = [p for p in rules if p.endswith("/") and key.startswith(p)]
    return rules[max(prefixes, key=len)] if prefixes else rules.get("*", MEAN)


def reduce_metrics(metrics: dict[str, float], weight: float, rules: dict[str, str]) -> dict[str, float]:
    """This rank's ``metrics`` combined with every other rank's (:func:`combine_metrics`), on every rank;
    ``metrics`` itself in one process."""
    if not active():
        return metrics
    return combine_metrics(all_gather_objects((weight, metrics)), rules)


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shutdown() -> None:
    """Leave the process group (at the end of a run: NCCL warns about a group never destroyed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
