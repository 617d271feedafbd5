"""A strategy wrapper that validates SRM updates before any aggregator sees them.

One diverged or malicious device can ruin a weighted mean: a NaN spreads to every weight, a huge update drags
the average away. ``UpdateGuard`` wraps any Flower strategy (FedAvg, FedProx, FedAdam...), rejects such
replies, logs and counts them, and hands the rest to the inner strategy, like Flower's own DP wrappers
(``flwr.serverapp.strategy.dp_fixed_clipping``). It also reports the median and largest update norm of the
replies it kept, the figures a bound on updates (``max_update_norm``, or ``dp_clip`` for privacy) is set from;
a private run turns them off (``report_norms``), since the largest is one node's raw update norm, published.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.differential_privacy import get_norm

from lsc4rec.records import ARRAYS, NUM_EXAMPLES, reply_metrics
from strategies.wrapper import StrategyWrapper

REJECTED_NONFINITE = "rejected-nonfinite"  # replies whose arrays hold NaN or inf
REJECTED_NORM = "rejected-norm"  # replies with ||w_client - w_global||_2 > max_update_norm
# no model ArrayRecord shaped like the global one, an unknown record, a weight missing, negative or not finite
REJECTED_MALFORMED = "rejected-malformed"
REASONS = (REJECTED_NONFINITE, REJECTED_NORM, REJECTED_MALFORMED)
EMPTY_UPDATES = "empty-updates"  # well-formed replies of nodes with no training example: no error
UPDATE_NORM_MEDIAN = "update-norm-median"  # train metric: median ||w_node - w_global||_2 of the kept replies
UPDATE_NORM_MAX = "update-norm-max"  # train metric: the largest of them


class UpdateGuard(StrategyWrapper):
    """Reject non-finite, oversized and malformed train replies, then delegate to ``strategy``.

    A well-formed reply of a node with no training example is no error either; it is counted as
    ``empty-updates``. Weighted by examples (weight 0) it is left out, since a mean over such replies alone would
    divide by zero; where every node weighs alike (a private run) it is kept: the zero update it is.

    Parameters
    ----------
    strategy
        The aggregator of the kept replies; every other call is delegated to it unchanged.
    max_update_norm
        Largest accepted L2 norm of a client's update over all arrays; ``None`` = no bound.
    weighted_by_key
        The MetricRecord key holding the reply's weight: its example count (Flower's ``num-examples``), or
        ``nodes`` (1 each) in a private run.
    arrayrecord_key
        The reply's ArrayRecord holding the model (Flower's ``arrays``).
    extra_records
        Other ArrayRecords a reply may carry for the inner strategy (``ItemWeighting``'s item counts); a
        reply with any other ArrayRecord is malformed.
    report_norms
        Add the kept updates' median and largest norm to the round's train metrics.

    Each round's rejections by reason, and its empty updates, are added to its train MetricRecord, which holds
    only these counts in a round where no reply was kept.
    """

    def __init__(
        self,
        strategy: Strategy,
        max_update_norm: float | None = None,
        weighted_by_key: str = NUM_EXAMPLES,
        arrayrecord_key: str = ARRAYS,
        extra_records: tuple[str, ...] = (),
        report_norms: bool = True,
    ) -> None:
        if max_update_norm is not None and not max_update_norm > 0:
            raise ValueError(f"max_update_norm must be > 0 or None, got {max_update_norm!r}.")
        super().__init__(strategy)
        self.max_update_norm = max_update_norm
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.extra_records = extra_records
        self.report_norms = report_norms
        self._global: dict[str, np.ndarray] = {}

    def summary(self) -> None:
        """Log the guard's settings, then the inner strategy's."""
        log(
            INFO,
            "\t├──> Update guard: max update norm %s, weight key '%s'",
            self.max_update_norm,
            self.weighted_by_key,
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays the updates are measured from, then delegate."""
        self._global = {key: array.numpy() for key, array in arrays.items()}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies that pass every check; no arrays, only the counts, when none is left."""
        counts = dict.fromkeys((*REASONS, EMPTY_UPDATES), 0)
        kept, norms = [], []
        for reply in replies:
            reason, norm = (None, None) if reply.has_error() else self._rejection(reply)
            if reason in (None, EMPTY_UPDATES) and not reply.has_error():
                counts[EMPTY_UPDATES] += reply_metrics(reply.content).get(NUM_EXAMPLES) == 0
            if reason == EMPTY_UPDATES:  # weight 0: nothing to average, nothing wrong
                continue
            if reason is None:
                kept.append(reply)  # error replies go on: the inner strategy logs them as failures
                if norm is not None:
                    norms.append(norm)
                continue
            counts[reason] += 1
            log(
                WARNING,
                "aggregate_train: round %d, node %d rejected: %s",
                server_round,
                reply.metadata.src_node_id,
                reason,
            )
        if all(reply.has_error() for reply in kept):  # nothing left to aggregate: the model stays, counted
            return None, MetricRecord(counts)
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        metrics = MetricRecord() if metrics is None else metrics
        for reason, count in counts.items():
            metrics[reason] = count
        if norms and self.report_norms:  # what a bound on updates (max_update_norm, dp_clip) would cut
            metrics[UPDATE_NORM_MEDIAN] = float(np.median(norms))
            metrics[UPDATE_NORM_MAX] = float(max(norms))
        return arrays, metrics

    def _rejection(self, reply: Message) -> tuple[str | None, float | None]:
        """The reason to leave ``reply`` out (``None`` to keep it), and its update's L2 norm where measured."""
        content = reply.content
        names = set(content.array_records)
        if self.arrayrecord_key not in names or not names <= {self.arrayrecord_key, *self.extra_records}:
            return REJECTED_MALFORMED, None
        if len(content.metric_records) != 1:
            return REJECTED_MALFORMED, None
        weight = reply_metrics(content).get(self.weighted_by_key)
        # an infinite count would weigh inf / inf = NaN into every aggregated weight; True is no count
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
            return REJECTED_MALFORMED, None
        arrays = {key: array.numpy() for key, array in content.array_records[self.arrayrecord_key].items()}
        shapes = {key: a.shape for key, a in arrays.items()}
        if self._global and shapes != {key: a.shape for key, a in self._global.items()}:
            return REJECTED_MALFORMED, None
        if not all(np.isfinite(a).all() for a in arrays.values()):
            return REJECTED_NONFINITE, None
        if weight == 0:  # a node whose users have no training target yet (lag 0, three interactions)
            return EMPTY_UPDATES, None
        if not self._global:
            if self.max_update_norm is not None:
                raise RuntimeError("aggregate_train needs the global arrays: call configure_train first.")
            return None, None
        norm = get_norm([a.astype(np.float64) - self._global[k] for k, a in arrays.items()])
        if self.max_update_norm is not None and norm > self.max_update_norm:
            return REJECTED_NORM, norm
        return None, norm
