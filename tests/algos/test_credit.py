"""Divergence credit: which token of a wrong completion takes its (negative) advantage.

Expected positions are read off the hand-written token ids in each test.
"""

from __future__ import annotations

import pytest
import torch

from picorl.algos import credit
from picorl.algos.config import AlgoConfig
from picorl.rollout.episodes import Episode
from picorl.train.batch import make_micro_batches
from picorl.train.update import credited_masks


def test_a_wrong_completion_is_blamed_where_it_leaves_its_closest_better_sibling():
    completions = [
        [5, 6, 7, 8, 9],  # right
        [5, 6, 1, 8, 9],  # wrong: leaves the right one at index 2
        [5, 6, 7, 8, 2],  # right too, with another ending
        [5, 6, 7, 3],  # wrong: shares 5 6 7 with both right ones -> index 3
    ]
    rewards = [1.0, 0.0, 1.0, 0.0]
    advantages = [0.87, -0.87, 0.87, -0.87]
    assert credit.divergence_points(completions, rewards, advantages, [0, 0, 0, 0]) == [None, 2, None, 3]


def test_only_better_siblings_of_the_same_group_count():
    completions = [[1, 2, 3], [1, 2, 4], [1, 9, 9], [1, 2, 4]]
    # group 0: [1,2,3] r=1 and [1,2,4] r=0; group 1: [1,9,9] r=1 and [1,2,4] r=0.5.
    # The last one shares 1 2 with group 0's right completion, but its own better sibling is [1,9,9].
    rewards = [1.0, 0.0, 1.0, 0.5]
    advantages = [0.7, -0.7, 0.7, -0.7]
    assert credit.divergence_points(completions, rewards, advantages, [0, 0, 1, 1]) == [None, 2, None, 1]


def test_positive_advantages_keep_sequence_credit_even_below_a_better_sibling():
    # rewards 1, 0.9, 0, 0 (mean 0.475): the 0.9 completion has a better sibling but a positive advantage
    completions = [[1, 2, 3], [1, 2, 4], [7], [8]]
    rewards = [1.0, 0.9, 0.0, 0.0]
    advantages = [r - 0.475 for r in rewards]
    assert credit.divergence_points(completions, rewards, advantages, [0, 0, 0, 0]) == [None, None, 0, 0]


def test_the_blamed_token_is_the_first_sampled_one_at_or_after_the_divergence():
    # index 2 is a template token the engine did not sample (e.g. a forced tag): the blame moves to 3
    assert credit.credited_tokens([True, True, False, True, True], 2) == [False, False, False, True, False]
    assert credit.credited_tokens([True, True, True], None) == [True, True, True]
    # a wrong completion that is a prefix of a better one: nothing of its own to blame
    assert credit.credited_tokens([True, True], 2) == [False, False]


def _episode(group: int, completion: list[int], reward: float) -> Episode:
    return Episode(
        group=group, task_seed=group, prompt_ids=[0, 0], completion_ids=completion,
        action_mask=[True] * len(completion), engine_logprobs=[-1.0] * len(completion), reward=reward,
    )  # fmt: skip


def test_divergence_credit_reaches_the_micro_batches():
    episodes = [_episode(0, [4, 5, 6, 7], 1.0), _episode(0, [4, 5, 9, 7], 0.0)]
    rewards, advantages = torch.tensor([1.0, 0.0]), torch.tensor([0.7, -0.7])
    masks, metrics = credited_masks(episodes, rewards, advantages, "divergence")
    assert masks == [[True] * 4, [False, False, True, False]]
    assert metrics == {"credit/divergence_at": 0.5}
    (mb,) = make_micro_batches(
        episodes, advantages, 4, pad_id=0, device=torch.device("cpu"), loss_masks=masks
    )
    rows = {index: row for row, index in enumerate(mb.index)}
    # prompt of 2 tokens, then the completion: only the wrong completion's token 9 is trained of it
    assert mb.action_mask[rows[1]].tolist() == [False, False, False, False, True, False]
    assert mb.action_mask[rows[0]].tolist() == [False, False, True, True, True, True]
    # the length normalisers still count every sampled token of the blamed completion
    assert mb.sequence_lengths.tolist() == [4, 4] and mb.num_tokens == 8
    assert credited_masks(episodes, rewards, advantages, "sequence") == (None, {})


def test_credit_is_validated():
    assert AlgoConfig(credit="divergence").credit == "divergence"
    with pytest.raises(ValueError, match="credit must be one of"):
        AlgoConfig(credit="token")
    with pytest.raises(ValueError, match="ppo"):
        AlgoConfig(algo="ppo", credit="divergence")
