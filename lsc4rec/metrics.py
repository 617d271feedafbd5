"""HR, NDCG and MRR at cut-offs over ranked lists, with pessimistic ties.

Every metric here is computed from the 0-based rank of the target: the number of items scored at least as high
as the target, other than the target itself (so a tie ranks the target after every item with an equal score).
A target absent from the ranked list has rank ``inf`` and counts as a miss at every cut-off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

CUTOFFS = (1, 5, 10, 20)


def target_ranks(scores: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    """0-based pessimistic rank of ``scores[b, target_index[b]]`` in each row of ``scores`` [B, N].

    ``target_index[b] < 0`` marks a target outside the list: its rank is ``inf``, as is a NaN target score.
    Scores of ``-inf`` (excluded items) never outrank a finite target; a NaN score of another item (a model
    that diverged on part of the catalogue) does, as a tie does, so that a broken model cannot score better
    than a sound one.
    """
    rows = torch.arange(scores.shape[0])
    target_scores = scores[rows, target_index.clamp(min=0)]
    # a NaN target (a diverged model) would count as rank -1, a hit at every cut-off: it is a miss
    present = (target_index >= 0) & ~torch.isnan(target_scores)
    at_least = ((scores >= target_scores[:, None]) | torch.isnan(scores)).sum(dim=1) - 1
    return torch.where(present, at_least.double(), torch.full_like(at_least, math.inf, dtype=torch.float64))


def metrics_from_ranks(
    ranks: np.ndarray | torch.Tensor, cutoffs: Iterable[int] = CUTOFFS
) -> dict[str, float]:
    """Mean HR@k, NDCG@k and MRR@k over users, from 0-based ranks (``inf`` = miss)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("metrics need at least one ranked target.")
    out: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks < k
        safe = np.where(hit, ranks, 0.0)
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(ndcg_per_user(ranks, k).mean())
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (safe + 1.0), 0.0).mean())
    return out


def ndcg_per_user(ranks: np.ndarray | torch.Tensor, k: int) -> np.ndarray:
    """Each user's NDCG@k from 0-based ranks (``inf`` = miss): what sums and histograms of NDCG add up."""
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks < k
    return np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 0.0) + 2.0), 0.0)


def list_ranks(ranked_items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target in already-ranked item lists [B, K] (``inf`` where absent).

    For lists whose order is final (no scores left to tie); used for the LLM's candidate lists.
    """
    hits = ranked_items == targets[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1).astype(np.float64), np.inf)
