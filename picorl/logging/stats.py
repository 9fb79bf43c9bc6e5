"""Confidence intervals for accuracies measured on a finite eval set."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (95% with the default ``z``).

    Unlike the normal approximation ``p +- z*sqrt(p(1-p)/n)`` it stays inside [0, 1] and does not collapse
    to a zero-width interval at 0/n or n/n, which is exactly where small eval sets sit early in training.
    ``n == 0`` carries no information, so the interval is the whole range (0.0, 1.0).
    """
    if n < 0:
        raise ValueError(f"wilson_interval: n must be >= 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: successes must be in 0..n={n}, got {successes}")
    if z <= 0:
        raise ValueError(f"wilson_interval: z must be > 0, got {z}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Clamp float noise: at p = 0 or 1 the bound is exactly 0 or 1 in exact arithmetic.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high
