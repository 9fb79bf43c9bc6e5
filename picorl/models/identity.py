"""Which base model an adapter or checkpoint belongs to: its name and a fingerprint of its weights.

A LoRA adapter is only meaningful on the weights it was trained on; loaded onto another base with the
same shapes it loads without complaint and is silently wrong. So checkpoints and adapters record the
base's ``name`` (as given to ``--model``; also written to ``adapter_config.json``'s
``base_model_name_or_path``) and a fingerprint: a fixed sample of at most ``SAMPLE`` weight values
spread over every tensor, plus the parameter count. Two bases are the same if the counts agree and
(almost) every sampled value agrees to ``RTOL`` relative (bf16 rounds an fp32 weight by at most 0.2%;
other weights differ by ~100%), so a run trained in fp32 on a CPU can be evaluated in bf16 on a GPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch

SAMPLE = 1024
RTOL = 0.005
ATOL = 1e-6  # the fingerprint keeps 6 decimals
SAME_FRACTION = 0.99


def base_model_record(model: torch.nn.Module, name: str) -> dict[str, Any]:
    """``{"name", "num_parameters", "fingerprint"}`` of a base model (call before wrapping it)."""
    params = [p for _, p in sorted(model.named_parameters(), key=lambda item: item[0])]
    per_tensor = max(1, math.ceil(SAMPLE / max(1, len(params))))
    values: list[float] = []
    with torch.no_grad():
        for p in params:
            flat = p.detach().reshape(-1)
            # Integer positions: a float32 linspace rounds past the end of tensors over 2**24 elements.
            count = min(per_tensor, flat.numel())
            index = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(1, count - 1)
            values += flat[index].float().cpu().tolist()
    return {
        "name": name,
        "num_parameters": sum(p.numel() for p in params),
        "fingerprint": [round(v, 6) for v in values[:SAMPLE]],
    }


def same_base(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether two records describe the same weights (see the module docstring for the tolerance)."""
    if saved.get("num_parameters") != current.get("num_parameters"):
        return False
    a = torch.tensor(saved.get("fingerprint", []), dtype=torch.float64)
    b = torch.tensor(current.get("fingerprint", []), dtype=torch.float64)
    if a.shape != b.shape or a.numel() == 0:
        return False
    close = (a - b).abs() <= RTOL * a.abs() + ATOL
    return float(close.double().mean()) >= SAME_FRACTION


def describe(record: dict[str, Any]) -> str:
    return f"{record.get('name')!r} ({record.get('num_parameters', '?'):,} parameters)"
