import torch

from picorl.rollout.episodes import Episode
from picorl.train.batch import make_micro_batches


def episode(prompt, completion, mask, finish="stop", group=0):
    return Episode(
        group=group, task_seed=0, prompt_ids=prompt, completion_ids=completion, action_mask=mask,
        engine_logprobs=[-0.5 if m else 0.0 for m in mask], finish_reason=finish,
    )  # fmt: skip


def test_micro_batches_keep_exact_ids_and_mask_only_sampled_tokens():
    episodes = [
        episode([1, 2, 3], [10, 11, 12], [True, True, True]),
        episode([1, 2], [20, 21, 22, 23, 24], [True, True, False, False, True]),  # env turn in the middle
        episode([1], [30, 31], [True, True], finish="length"),  # truncated: no EOS is invented
    ]
    advantages = torch.tensor([0.5, -1.0, 2.0])
    batches = make_micro_batches(
        episodes, advantages, micro_batch_size=2, pad_id=0, device=torch.device("cpu")
    )
    assert sum(len(b.index) for b in batches) == 3
    by_episode = {}
    for b in batches:
        for row, i in enumerate(b.index):
            by_episode[i] = (b, row)
    for i, e in enumerate(episodes):
        b, row = by_episode[i]
        n = len(e.prompt_ids) + len(e.completion_ids)
        assert b.input_ids[row, :n].tolist() == e.prompt_ids + e.completion_ids
        assert (b.input_ids[row, n:] == 0).all(), "padding goes on the right: the forward passes no mask"
        mask = b.action_mask[row].tolist()
        assert mask[: len(e.prompt_ids)] == [False] * len(e.prompt_ids)
        assert mask[len(e.prompt_ids) : n] == e.action_mask
        assert not any(mask[n:])
        assert b.advantages[row] == advantages[i]
        assert torch.allclose(b.engine_logprobs[row][b.action_mask[row]], torch.tensor(-0.5))
    b, row = by_episode[2]
    assert b.input_ids[row, 3:].eq(0).all() if b.input_ids.shape[1] > 3 else True


def test_excluded_episodes_are_left_out():
    episodes = [episode([1], [2], [True]), episode([1], [3], [True]), episode([1], [4], [True])]
    batches = make_micro_batches(
        episodes, torch.zeros(3), 8, 0, torch.device("cpu"), include=[True, False, True]
    )
    assert sorted(i for b in batches for i in b.index) == [0, 2]
