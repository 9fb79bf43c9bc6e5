import math

import pytest

from picorl.logging.stats import wilson_interval


def quadratic_bounds(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson bounds as the two roots of (p_hat - p)^2 = z^2 p (1 - p) / n, solved for p."""
    p_hat = successes / n
    a = 1 + z * z / n
    b = -(2 * p_hat + z * z / n)
    c = p_hat * p_hat
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


# Hand-computed with z = 1.96 (z^2 = 3.8416):
#   0/10:  high = z^2 / (n + z^2) = 3.8416 / 13.8416 = 0.277540
#   10/10: low  = n / (n + z^2)   = 10 / 13.8416     = 0.722460
#   5/10:  0.5 -+ 1.96 * sqrt(0.025 + 0.009604) / 1.38416 = 0.5 -+ 0.263410
#   38/100: center (0.38 + 0.019208) / 1.038416 = 0.384440, half 1.96 * sqrt(0.002356 + 0.00009604) / 1.038416 = 0.093465
@pytest.mark.parametrize(
    "successes, n, low, high",
    [
        (0, 10, 0.0, 0.277540),
        (5, 10, 0.236590, 0.763410),
        (10, 10, 0.722460, 1.0),
        (38, 100, 0.290974, 0.477904),
    ],
)
def test_hand_computed_values(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=2e-6)


@pytest.mark.parametrize("successes, n", [(1, 3), (7, 20), (180, 200), (1, 1000)])
def test_bounds_solve_the_defining_quadratic(successes, n):
    assert wilson_interval(successes, n) == pytest.approx(quadratic_bounds(successes, n), abs=1e-12)


def test_no_samples_is_the_whole_range():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_extremes_are_exact_and_interval_contains_the_estimate():
    assert wilson_interval(0, 7)[0] == 0.0
    assert wilson_interval(7, 7)[1] == 1.0
    for successes in range(0, 21):
        low, high = wilson_interval(successes, 20)
        assert 0.0 <= low <= successes / 20 <= high <= 1.0


def test_symmetric_under_swapping_successes_and_failures():
    low, high = wilson_interval(3, 17)
    mirror_low, mirror_high = wilson_interval(14, 17)
    assert low == pytest.approx(1 - mirror_high) and high == pytest.approx(1 - mirror_low)


def test_wider_z_and_fewer_samples_widen_the_interval():
    narrow, wide = wilson_interval(50, 100, z=1.0), wilson_interval(50, 100, z=2.576)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    small, big = wilson_interval(10, 20), wilson_interval(100, 200)
    assert small[1] - small[0] > big[1] - big[0]


@pytest.mark.parametrize("successes, n, z", [(-1, 10, 1.96), (11, 10, 1.96), (0, -1, 1.96), (1, 2, 0.0)])
def test_bad_input_is_rejected(successes, n, z):
    with pytest.raises(ValueError, match="wilson_interval"):
        wilson_interval(successes, n, z)
