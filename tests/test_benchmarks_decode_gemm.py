"""``benchmarks/decode_gemm.py``: its products are the model's weights, and the CPU smoke test runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_products_cover_every_weight_of_a_decode_step():
    from decode_gemm import QWEN3_4B, products

    base = {name: v for name, v in products(QWEN3_4B, rank=0).items()}
    params = sum(n * k * copies for n, k, copies in base.values())
    # Qwen3-4B without its norms: 36 layers of q/k/v/o and the MLP, plus the tied output head
    layer = 2560 * (4096 + 1024 + 1024) + 4096 * 2560 + 2560 * 9728 * 2 + 9728 * 2560
    assert params == 36 * layer + 151936 * 2560
    lora = products(QWEN3_4B, rank=32)
    assert lora["qkv+A"][0] == 6144 + 96 and lora["gate_up B"] == (19456, 64, 36)


def test_decode_gemm_tiny_cpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "benchmarks/decode_gemm.py", "--tiny", "--device", "cpu", "--ways", "cublas,transposed",
         "--batch", "4", "--repeats", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "product" not in line]
    assert len(rows) == 9, result.stdout  # 4 folded products, 4 B products, the output head
    assert "one decode step's products at batch 4: cublas" in result.stdout
