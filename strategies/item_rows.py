"""Item-weighted averaging of the SRM's item-embedding rows: each row averaged over the nodes that hold the item.

With FedAvg, the row of an item only one edge box has seen gets a tenth of that box's update when ten boxes
train: the nine others have no positive example of it and pull it back. Central training has no such
dilution, and on P5 Beauty it kept the federated SRM well below the central one (BENCHMARKS.md). Here row
``i`` is averaged with weights ``count[c, i] + n_c / N``: how often node ``c``'s training data holds item ``i``
(the nodes reply these counts), plus the node's example share as smoothing, so an item no node holds falls
back to FedAvg's weights. Every other array keeps FedAvg's example weights.

The wrapper rescales each reply's update of the item rows, ``G + ω[c, i] / p_c · (E_c - G)`` with ``p_c =
n_c / N`` and ``ω`` the row weights normalised over the nodes, so that the inner strategy's example-weighted
mean of the rescaled replies is the item-weighted mean. The inner strategy therefore stays any of Flower's:
FedAvg gets the weighted rows, FedAdam and FedAvgM get them as their pseudo-gradient.

The counts tell the server which items a node's users interacted with, so this suits edge boxes of many users,
not one-user devices; it is off by default (``federation.item_weighted``).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from lsc4rec.records import ARRAYS, ITEM_COUNTS, NUM_EXAMPLES, reply_metrics
from strategies.wrapper import StrategyWrapper


class ItemWeighting(StrategyWrapper):
    """Average ``rows_key`` row by row with the nodes' item counts, then delegate to ``strategy``.

    Parameters
    ----------
    strategy
        The aggregator of the (rescaled) replies; every other call is delegated to it unchanged.
    rows_key
        The array of the model record whose rows are items (the SRM's ``item_embedding.weight``).
    counts_key
        The ArrayRecord of a train reply holding one array: per-row counts, shaped like the rows' first axis.
        It is removed before the inner strategy sees the reply. A reply without valid counts is taken to
        hold none of the items: its rows get the smoothing weight only (logged).
    arrayrecord_key, weighted_by_key
        The model's ArrayRecord and the MetricRecord key of the example count, as in Flower's strategies.
    """

    def __init__(
        self,
        strategy: Strategy,
        rows_key: str = "item_embedding.weight",
        counts_key: str = ITEM_COUNTS,
        arrayrecord_key: str = ARRAYS,
        weighted_by_key: str = NUM_EXAMPLES,
    ) -> None:
        super().__init__(strategy)
        self.rows_key = rows_key
        self.counts_key = counts_key
        self.arrayrecord_key = arrayrecord_key
        self.weighted_by_key = weighted_by_key
        self._rows: np.ndarray | None = None

    def summary(self) -> None:
        """Log the weighting, then the inner strategy's settings."""
        log(INFO, "\t├──> Item-weighted rows: '%s' by the replies' '%s'", self.rows_key, self.counts_key)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global item rows the updates start from, then delegate."""
        self._rows = arrays[self.rows_key].numpy()
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Rescale the replies' item-row updates (see the module docstring), then delegate."""
        replies = list(replies)
        good = [reply for reply in replies if not reply.has_error()]
        if good and self._rows is not None:
            self._reweight(server_round, good)
        return self.strategy.aggregate_train(server_round, replies)

    def _reweight(self, server_round: int, replies: list[Message]) -> None:
        """Replace every reply's content by a copy without the counts and with its item rows rescaled."""
        assert self._rows is not None
        examples = np.array([self._examples(reply) for reply in replies], dtype=np.float64)
        share = examples / examples.sum()  # p_c, the inner strategy's weights
        weights = np.stack([self._counts(server_round, reply) for reply in replies])
        weights = weights + share[:, None]  # smoothing: an item no node holds gets FedAvg's weights
        omega = weights / weights.sum(axis=0, keepdims=True)  # [nodes, rows]
        for reply, p, w in zip(replies, share, omega, strict=True):
            model = reply.content[self.arrayrecord_key]
            rows = model[self.rows_key].numpy()
            scale = (w / p).reshape(-1, *([1] * (rows.ndim - 1)))
            rescaled = (self._rows + scale * (rows - self._rows)).astype(rows.dtype)
            arrays = ArrayRecord({key: model[key] for key in model})
            arrays[self.rows_key] = Array(rescaled)
            content = RecordDict({k: r for k, r in reply.content.items() if k != self.counts_key})
            content[self.arrayrecord_key] = arrays
            reply.content = content

    def _examples(self, reply: Message) -> float:
        return float(reply_metrics(reply.content)[self.weighted_by_key])

    def _counts(self, server_round: int, reply: Message) -> np.ndarray:
        """The reply's per-row counts, or zeros (the smoothing weight alone) when missing or malformed."""
        assert self._rows is not None
        record = reply.content.array_records.get(self.counts_key)
        counts = None
        if record is not None and len(record) == 1:
            counts = next(iter(record.values())).numpy().astype(np.float64)
        valid = counts is not None and counts.shape == self._rows.shape[:1]
        if not valid or not (np.isfinite(counts) & (counts >= 0)).all():
            log(
                WARNING,
                "aggregate_train: round %d, node %d sent no valid '%s'; its item rows get the smoothing weight",
                server_round,
                reply.metadata.src_node_id,
                self.counts_key,
            )
            return np.zeros(self._rows.shape[0])
        return counts
