import pytest

from picorl.train.curriculum import curriculum_tier

TIERS = [6, 7, 8]


def test_starts_on_the_first_tier():
    assert curriculum_tier([], TIERS, 0.5, 3) == 6


def test_promotes_when_the_window_mean_reaches_the_threshold():
    history = [(6, 0.4), (6, 0.5), (6, 0.5)]  # mean 0.467 < 0.5
    assert curriculum_tier(history, TIERS, 0.5, 3) == 6
    history.append((6, 0.6))  # last 3: 0.533
    assert curriculum_tier(history, TIERS, 0.5, 3) == 7


def test_needs_a_full_window_at_the_new_tier():
    history = [(6, 1.0)] * 3 + [(7, 1.0)] * 2
    assert curriculum_tier(history, TIERS, 0.5, 3) == 7
    assert curriculum_tier(history + [(7, 1.0)], TIERS, 0.5, 3) == 8


def test_stays_on_the_last_tier():
    history = [(6, 1.0)] * 3 + [(7, 1.0)] * 3 + [(8, 1.0)] * 10
    assert curriculum_tier(history, TIERS, 0.5, 3) == 8


def test_needs_a_threshold():
    with pytest.raises(ValueError, match="threshold"):
        curriculum_tier([], TIERS, None, 3)
