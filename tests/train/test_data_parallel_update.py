"""``learn`` (advantages -> optimizer steps) on two gloo ranks equals one process on the same episodes,
including the cases the end-to-end test does not reach: a rank with nothing to train on (its groups
all masked out), batch statistics (REINFORCE's batch mean and std), a full fine-tune (every weight's
gradient all-reduced) and PPO's value head."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaForCausalLM

from picorl import distributed
from picorl.algos.config import AlgoConfig
from picorl.algos.value_head import ValueHead, value_head_param_group
from picorl.config import Config, RolloutConfig, TrainConfig
from picorl.rollout.episodes import Episode
from picorl.train.update import PER_RANK_METRICS, UpdateContext, learn

CASES = {
    # rank 0's groups are all truncated: masked out, so rank 0 has no micro-batch at all
    "grpo_empty_rank": AlgoConfig(algo="grpo", overlong="mask"),
    "reinforce_batch_std": AlgoConfig(algo="reinforce", scale_rewards="batch"),
    "ppo": AlgoConfig(algo="ppo"),  # one minibatch (several: each rank splits its own share; not exact)
}

# Statistics of each micro-batch (token means, the micro-batch's own loss), averaged over micro-batches
# weighted by their sequences, in one process as on N ranks: they depend on how sequences fall into
# micro-batches (in one process too: --micro-batch-size moves them), which differs between the two.
MICRO_BATCH_MEANS = ("loss/policy", "value/", "clip/", "ratio/", "approx_kl", "is/", "kl/")


def episodes() -> list[Episode]:
    """4 groups of 4 (groups 0-1 truncated), rewards that vary within each group."""
    g = torch.Generator().manual_seed(0)
    out = []
    for group in range(4):
        prompt = torch.randint(1, 30, (3 + group,), generator=g).tolist()
        for j in range(4):
            n = 2 + (group + j) % 3
            completion = torch.randint(1, 30, (n,), generator=g).tolist()
            out.append(Episode(
                group, group, prompt, completion, [True] * n, [-3.0] * n, reward=((group + 2 * j) % 4) / 3,
                finish_reason="length" if group < 2 else "stop",
            ))  # fmt: skip
    return out


def context(algo: AlgoConfig) -> UpdateContext:
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    ))  # fmt: skip  (a full fine-tune: every weight trains)
    head = ValueHead(32) if algo.algo == "ppo" else None
    groups = [{"params": list(model.parameters())}]
    if head is not None:
        groups.append(value_head_param_group(head, 1e-2))
    optimizer = torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.0)
    config = Config(
        algo=algo, rollout=RolloutConfig(k=4, num_tasks=4, max_tokens=4),
        train=TrainConfig(micro_batch_size=3, max_grad_norm=1.0),
    )  # fmt: skip
    return UpdateContext(
        config=config, model=model, tokenizer=SimpleNamespace(pad_token_id=0), engine=None, make_env=None,
        optimizer=optimizer, lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        device=torch.device("cpu"), value_head=head,
    )  # fmt: skip


def run(ranks: int, rank: int) -> dict:
    """Two updates of every case on this rank's share; the weights and metrics after them."""
    out = {}
    for name, algo in CASES.items():
        ctx = context(algo)
        mine = distributed.shard(episodes(), rank, ranks)
        metrics = [learn(ctx, [Episode(**vars(e)) for e in mine])[0] for _ in range(2)]
        weights = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        if ctx.value_head is not None:
            weights.update({f"head.{k}": v.detach().clone() for k, v in ctx.value_head.state_dict().items()})
        out[name] = (weights, metrics)
    return out


def _rank(rank: int, store: str, results: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.save(run(2, rank), f"{results}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_learn_what_one_process_learns(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2)
    expected = run(1, 0)
    ranks = [torch.load(tmp_path / f"out.{r}", weights_only=False) for r in range(2)]
    for name in CASES:
        weights, metrics = expected[name]
        start = context(CASES[name])
        initial = {**start.model.state_dict(), **{f"head.{k}": v for k, v in
                   (start.value_head.state_dict() if start.value_head is not None else {}).items()}}  # fmt: skip
        moved = sum(float(((weights[k] - initial[k]) ** 2).sum()) for k in weights) ** 0.5
        assert moved > 0, f"{name}: the updates changed the weights"
        for got in ranks:
            got_weights, got_metrics = got[name]
            # fp32 sums in another order, through Adam (which divides each element by its own gradient's
            # size): the two updates' change to the weights agrees to 1e-4 of its size (measured ~1e-6)
            error = sum(float(((got_weights[k] - weights[k]) ** 2).sum()) for k in weights) ** 0.5
            assert error < 1e-4 * moved, f"{name}: {error / moved:.1e} of the update's size"
            for want, have in zip(metrics, got_metrics):
                assert set(have) == set(want), name
                # value/explained_variance: a variance ratio per micro-batch; PER_RANK_METRICS are each
                # rank's own until rl_update reduces them (train/micro_batches: this rank's split)
                for key in set(want) - {"value/explained_variance"} - set(PER_RANK_METRICS):
                    tol = 5e-2 if key.startswith(MICRO_BATCH_MEANS) else 1e-5
                    assert have[key] == pytest.approx(want[key], rel=1e-4, abs=tol), f"{name} {key}"
