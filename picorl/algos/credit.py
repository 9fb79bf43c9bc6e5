"""Which tokens of a completion take its advantage (``credit``).

``sequence`` (GRPO as published): every sampled token of a completion shares its advantage.

``divergence``: a completion with a NEGATIVE advantage is trained only on the token where it leaves
the path of its better siblings: the first token after its longest common prefix with any completion
of its group that scored higher. Its other tokens are left out of the loss; the length normalisers
still count them, so the blamed token weighs what it weighs under sequence credit (``A_i / |o_i|``
with the ``grpo`` loss), the rest of the completion's weight is dropped rather than moved onto it.
Completions with an advantage >= 0 keep every token.

Why: when the demonstrations teach a deterministic trace (the counting traces of
:mod:`picorl.envs.traces`), a correct and a wrong sample of one task agree token for token up to the
slip that made the wrong one wrong (a dropped line, a skipped letter); after the slip the wrong sample
goes on executing the algorithm correctly on its mistaken state. Sequence credit pushes ALL of those
later tokens down, so RL unlearns correct steps along with the slip; the shared prefix cancels out
only between samples of equal and opposite weight. Divergence credit puts the blame on the slip
alone. It is related to the step-level credit that tree-search RL takes from shared prefixes
(e.g. TreeRL, Hou et al. 2025), here from the k independent samples GRPO already has.

Measured (docs/results.md, 2026-12-02, SmolLM2-135M after SFT, tiers 6-8) with the first version,
whose normaliser counted the trained tokens only, so that a blamed token carried its completion's
whole weight: from the same SFT adapter, 10 updates fixed 4 and broke 10 of 600 eval answers where
sequence credit fixed 13 and broke 8. Its gradient norms were 2-6 (clipped to ``max_grad_norm`` 1)
against 0.003-0.016 with sequence credit: the blamed tokens set each step's direction and the clip
scaled the right samples' signal down ~300x. The normaliser above (one token's share) came after
that run and is not measured yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(a.numel(), b.numel())
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if differ.numel() else n


def divergence_points(
    completions: Sequence[Sequence[int]], rewards: Sequence[float], advantages: Sequence[float],
    groups: Sequence[int],
) -> list[int | None]:  # fmt: skip
    """For each completion with a negative advantage: the index (into its completion ids) of its first
    token that no better sibling shares, i.e. its longest common prefix with any completion of the same
    group whose reward is higher. ``None`` for the others (they keep sequence credit). A negative
    advantage implies a better sibling under every group baseline; without one (a batch baseline,
    REINFORCE) the whole completion is its own divergence: index 0."""
    ids = [torch.tensor(list(c), dtype=torch.long) for c in completions]
    members: dict[int, list[int]] = {}
    for j, group in enumerate(groups):
        members.setdefault(group, []).append(j)
    points: list[int | None] = []
    for i, (reward, advantage, group) in enumerate(zip(rewards, advantages, groups)):
        if advantage >= 0:
            points.append(None)
            continue
        better = [j for j in members[group] if rewards[j] > reward]
        points.append(max((_common_prefix(ids[i], ids[j]) for j in better), default=0))
    return points


def credited_tokens(action_mask: Sequence[bool], divergence: int | None) -> list[bool]:
    """The completion tokens the loss trains: every sampled token (``action_mask``) without a
    divergence point, else only the first sampled token at or after it (none if the completion ends
    there, e.g. a wrong completion that is a prefix of a better one)."""
    if divergence is None:
        return list(action_mask)
    credited = [False] * len(action_mask)
    for t in range(divergence, len(action_mask)):
        if action_mask[t]:
            credited[t] = True
            break
    return credited
