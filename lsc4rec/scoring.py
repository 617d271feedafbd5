"""The one scoring interface every recommender here exposes, and full-catalogue evaluation over it.

A scorer maps left-padded histories [B, T] (item ids 1..N, 0 = padding) to scores of given candidates [B, K]
or of the whole catalogue [B, N + 1] (column 0, the padding id, is ``-inf``). The SRMs and the reference floors
both speak it, so they are evaluated by the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
import torch

from lsc4rec.data.batching import left_pad
from lsc4rec.data.split import Stage, TemporalSplit
from lsc4rec.metrics import CUTOFFS, metrics_from_ranks, target_ranks


class Scorer(Protocol):
    """Anything that scores candidate lists and the whole catalogue for a batch of histories."""

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor: ...

    def score_all(self, history: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def catalogue_scores(scorer: Scorer, histories: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """Scores of every item [B, N + 1], with each whole history and the padding id at ``-inf``.

    The whole history (not only the newest ``max_len`` items the model reads) is excluded, as in RecBole's
    full-sort evaluation: an item the user already has is never recommended again.
    """
    scores = scorer.score_all(left_pad(histories, max_len)).float().clone()
    for row, seq in enumerate(histories):
        scores[row, torch.from_numpy(np.asarray(seq, dtype=np.int64))] = -torch.inf
    scores[:, 0] = -torch.inf
    return scores


def full_catalogue_ranks(
    scorer: Scorer, histories: Sequence[np.ndarray], targets: np.ndarray, max_len: int, batch_size: int = 512
) -> np.ndarray:
    """0-based pessimistic rank of each target among all items, history items excluded (leave-one-out)."""
    ranks = []
    for start in range(0, len(histories), batch_size):
        scores = catalogue_scores(scorer, histories[start : start + batch_size], max_len)
        target = torch.from_numpy(np.asarray(targets[start : start + batch_size], dtype=np.int64))
        ranks.append(target_ranks(scores, target).numpy())
    return np.concatenate(ranks)


def evaluate_full(
    scorer: Scorer,
    split: TemporalSplit,
    stage: Stage,
    max_len: int,
    users: np.ndarray | None = None,
    side: Literal["device", "cloud"] = "device",
    cutoffs: tuple[int, ...] = CUTOFFS,
) -> dict[str, float]:
    """HR/NDCG/MRR of ``scorer`` on the ``stage`` target over the full catalogue, history excluded.

    ``side`` picks the query: the fresh device view (default) or the stale cloud view. ``users`` restricts the
    evaluation to those users (default: all).
    """
    users = np.arange(split.num_users) if users is None else users
    ranks = full_catalogue_ranks(
        scorer, split.views(stage, side, users), split.targets(stage, users), max_len
    )
    return metrics_from_ranks(ranks, cutoffs)
