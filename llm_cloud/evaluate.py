"""LLM-only evaluation on the test (or validation) target: stale (cloud view) and fresh (device view) queries.

The ranking is over the LLM's list of K (a target missing from the list is a miss), as in the paper; recall@K
of the stale list caps everything the device can do with it (DESIGN.md section 2). The validation target
x_{n-1} is never a target of the LLM's training either, so its figures are the ones to choose LLM settings by.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llm_cloud.engines import CandidateEngine
from lsc4rec.data import SequenceDataset, TemporalSplit
from lsc4rec.data.split import Stage
from lsc4rec.metrics import list_ranks, metrics_from_ranks

CUTOFFS = (5, 10, 20)
QUERIES = {"stale": "cloud", "fresh": "device"}  # query name -> view of the stage's history


def evaluate_engine(
    engine: CandidateEngine,
    dataset: SequenceDataset,
    lag: int,
    k: int = 50,
    batch_size: int = 256,
    stage: Stage = "test",
) -> dict[str, dict[str, float]]:
    """HR/NDCG/MRR@{5,10,20} and recall@K for the stale and the fresh query of every user at ``stage``."""
    split = TemporalSplit(dataset, lag)
    targets = split.targets(stage)
    return {
        name: list_metrics(engine, split.views(stage, side), targets, k, batch_size)
        for name, side in QUERIES.items()
    }


def list_metrics(
    engine: CandidateEngine,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    k: int,
    batch_size: int = 256,
) -> dict[str, float]:
    """Metrics of the target's rank in the engine's K-list for each history."""
    ranks = list_ranks(ranked_lists(engine.candidates, histories, k, batch_size), targets)
    return {**metrics_from_ranks(ranks, CUTOFFS), f"recall@{k}": float(np.isfinite(ranks).mean())}


def ranked_lists(
    top_k: Callable[[list[list[int]], int], Sequence[tuple[list[int], list[float]]]],
    histories: Sequence[Sequence[int] | np.ndarray],
    k: int,
    batch_size: int,
) -> np.ndarray:
    """``[N, k]`` lists from ``top_k`` (an engine's ``candidates`` or a model's ``top_k``), in batches; 0 pads."""
    lists = []
    for start in range(0, len(histories), batch_size):
        chunk = [list(map(int, h)) for h in histories[start : start + batch_size]]
        lists += [items + [0] * (k - len(items)) for items, _ in top_k(chunk, k)]
    return np.array(lists, dtype=np.int64).reshape(len(lists), k)
