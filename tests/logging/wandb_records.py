"""Read an offline Weights & Biases run file (``run-ID.wandb``) back, for tests.

wandb writes its records as protobuf messages in LevelDB's log format (32 KiB blocks; each chunk has a
7-byte header: CRC, little-endian length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte file header
(``:W&B``, magic, version). The package no longer ships a Python reader, and this is all a test needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, pending, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the tail of a block too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        else:
            continue
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def _items(items) -> dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def history(records) -> list[dict[str, Any]]:
    """Every ``run.log`` call, as {metric: value}."""
    return [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]


def config(records) -> dict[str, Any]:
    """The run's config as the run file records it (from the run record and config updates)."""
    out: dict[str, Any] = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(_items(r.run.config.update))
        elif kind == "config":
            out.update(_items(r.config.update))
    return {k: v.get("value", v) if isinstance(v, dict) else v for k, v in out.items()}


def run_ids(records) -> set[str]:
    return {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}
