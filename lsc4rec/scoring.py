"""The one scoring interface every recommender here exposes, and full-catalogue evaluation over it.

A scorer maps left-padded histories [B, T] (item ids 1..N, 0 = padding) to scores of given candidates [B, K]
or of the whole catalogue [B, N + 1] (column 0, the padding id, is ``-inf``). SRMs, the reference floors and
the fused device ranking all speak it, so they are evaluated by the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from lsc4rec.data.batching import left_pad
from lsc4rec.metrics import target_ranks


class Scorer(Protocol):
    """Anything that scores candidate lists and the whole catalogue for a batch of histories."""

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor: ...

    def score_all(self, history: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def full_catalogue_ranks(
    scorer: Scorer, histories: Sequence[np.ndarray], targets: np.ndarray, max_len: int, batch_size: int = 512
) -> np.ndarray:
    """0-based pessimistic rank of each target among all items, history items excluded (leave-one-out).

    The whole history (not only the newest ``max_len`` items the model reads) is excluded, as in RecBole's
    full-sort evaluation.
    """
    ranks = []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start : start + batch_size]
        scores = scorer.score_all(left_pad(chunk, max_len)).float().clone()
        for row, seq in enumerate(chunk):
            scores[row, torch.from_numpy(np.asarray(seq, dtype=np.int64))] = -torch.inf
        scores[:, 0] = -torch.inf
        target = torch.from_numpy(np.asarray(targets[start : start + batch_size], dtype=np.int64))
        ranks.append(target_ranks(scores, target).numpy())
    return np.concatenate(ranks)
