"""Reference floors: most-popular and a first-order item-transition model, behind the scoring interface.

They are cheap and strong on these short-sequence datasets, so every learned model is reported beside them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lsc4rec.data.split import TemporalSplit
from lsc4rec.metrics import CUTOFFS
from lsc4rec.scoring import evaluate_full


class MostPopular:
    """Scores every item by its count in the training sequences (the same list for every user)."""

    def __init__(self, sequences: Sequence[np.ndarray], num_items: int) -> None:
        counts = np.bincount(np.concatenate(list(sequences)), minlength=num_items + 1).astype(np.float64)
        counts[0] = -np.inf
        self.popularity = torch.from_numpy(counts)

    def score_all(self, history: torch.Tensor) -> torch.Tensor:
        return self.popularity.expand(history.shape[0], -1).clone()

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.popularity[candidates]


class ItemTransition(MostPopular):
    """First-order Markov floor: score(b | history ending in a) = count(a -> b), ties broken by popularity.

    Transitions are counted over consecutive pairs of the training sequences and kept as CSR arrays (a dense
    N x N table would not fit for 12k items); popularity is added below the smallest transition step.
    """

    def __init__(self, sequences: Sequence[np.ndarray], num_items: int) -> None:
        super().__init__(sequences, num_items)
        pairs = np.concatenate([np.stack([s[:-1], s[1:]], axis=1) for s in sequences if len(s) > 1])
        keys, counts = np.unique(pairs[:, 0] * (num_items + 1) + pairs[:, 1], return_counts=True)
        self.src, self.dst = keys // (num_items + 1), keys % (num_items + 1)
        self.counts = counts.astype(np.float64)
        self.row_start = np.searchsorted(self.src, np.arange(num_items + 2))
        finite = self.popularity[1:]
        self.scale = float(finite.max()) + 1.0  # one transition outweighs any popularity difference

    def score_all(self, history: torch.Tensor) -> torch.Tensor:
        scores = super().score_all(history)
        for row, last in enumerate(history[:, -1].tolist()):
            lo, hi = self.row_start[last], self.row_start[last + 1]
            scores[row, torch.from_numpy(self.dst[lo:hi])] += torch.from_numpy(
                self.counts[lo:hi] * self.scale
            )
        return scores

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return torch.gather(self.score_all(history), 1, candidates)


def reference_floors(
    split: TemporalSplit,
    max_len: int,
    users: np.ndarray | None = None,
    cutoffs: tuple[int, ...] = CUTOFFS,
) -> dict[str, dict[str, dict[str, float]]]:
    """Test metrics of both floors, fitted on the SRM training sequences, from both queries.

    ``out[floor]["fresh"]`` queries with the device view, ``out[floor]["stale"]`` with the cloud view (ℓ items
    behind); ranking is over the full catalogue with history items excluded.
    """
    train = [split.srm_train_sequence(u) for u in range(split.num_users)]
    n = split.dataset.num_items
    floors = (("most-popular", MostPopular(train, n)), ("item-transition", ItemTransition(train, n)))
    return {
        name: {
            query: evaluate_full(floor, split, "test", max_len, users, side, cutoffs)
            for query, side in (("fresh", "device"), ("stale", "cloud"))
        }
        for name, floor in floors
    }
