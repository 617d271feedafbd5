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
from collections import Counter
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
FAILED = "failed"  # replies that carry an error instead of an update (the node failed, or never answered)
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

    Each round's rejections by reason, its empty updates and its failed replies are added to its train
    MetricRecord, which holds only these counts in a round where no reply was kept. A reply is malformed when
    its model arrays are not the global ones (names, order and shapes: FedAvgM pairs arrays by position; a
    float narrower than 32 bits: the first reply's dtype becomes the aggregate's) or its metrics have other
    keys than the round's other replies (Flower's FedAvg refuses such a set of replies outright, which would
    end the run).
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
        counts = dict.fromkeys((*REASONS, EMPTY_UPDATES, FAILED), 0)
        replies = list(replies)
        usual_keys = _usual_metric_keys(replies)
        kept, norms = [], []
        for reply in replies:
            if reply.has_error():
                counts[FAILED] += 1
                kept.append(reply)  # the inner strategy logs each one's reason
                continue
            reason, norm = self._rejection(reply, usual_keys)
            if reason in (None, EMPTY_UPDATES):
                counts[EMPTY_UPDATES] += reply_metrics(reply.content).get(NUM_EXAMPLES) == 0
            if reason == EMPTY_UPDATES:  # weight 0: nothing to average, nothing wrong
                continue
            if reason is None:
                kept.append(reply)
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
            # the inner strategy, which logs failures, is not called: say why the round trained nothing
            if kept:
                log(
                    WARNING,
                    "aggregate_train: round %d, every reply failed, e.g. %s",
                    server_round,
                    kept[0].error,
                )
            return None, MetricRecord(counts)
        arrays, metrics = self.strategy.aggregate_train(server_round, kept)
        metrics = MetricRecord() if metrics is None else metrics
        for reason, count in counts.items():
            metrics[reason] = count
        if norms and self.report_norms:  # what a bound on updates (max_update_norm, dp_clip) would cut
            metrics[UPDATE_NORM_MEDIAN] = float(np.median(norms))
            metrics[UPDATE_NORM_MAX] = float(max(norms))
        return arrays, metrics

    def _rejection(
        self, reply: Message, usual_keys: frozenset[str] | None
    ) -> tuple[str | None, float | None]:
        """The reason to leave ``reply`` out (``None`` to keep it), and its update's L2 norm where measured."""
        content = reply.content
        names = set(content.array_records)
        if self.arrayrecord_key not in names or not names <= {self.arrayrecord_key, *self.extra_records}:
            return REJECTED_MALFORMED, None
        if len(content.metric_records) != 1 or frozenset(reply_metrics(content)) != usual_keys:
            return REJECTED_MALFORMED, None
        weight = reply_metrics(content).get(self.weighted_by_key)
        # an infinite count would weigh inf / inf = NaN into every aggregated weight; True is no count
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
            return REJECTED_MALFORMED, None
        arrays = {key: array.numpy() for key, array in content.array_records[self.arrayrecord_key].items()}
        if self._global and (
            _layout(arrays) != _layout(self._global)
            or not all(_same_precision(a, self._global[key]) for key, a in arrays.items())
        ):
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


def _usual_metric_keys(replies: list[Message]) -> frozenset[str] | None:
    """The metric keys most of the round's well-formed replies carry (the first such set on a tie), or None."""
    found = Counter(
        frozenset(reply_metrics(r.content))
        for r in replies
        if not r.has_error() and len(r.content.metric_records) == 1
    )
    return found.most_common(1)[0][0] if found else None


def _layout(arrays: dict[str, np.ndarray]) -> list[tuple[str, tuple[int, ...]]]:
    """The arrays' names, order and shapes: what an update must share with the global model."""
    return [(key, a.shape) for key, a in arrays.items()]


def _same_precision(update: np.ndarray, model: np.ndarray) -> bool:
    """An update's dtype is the model's, or both are floats of 32 bits or more (FedAdam's model is float64).

    The first kept reply's dtype becomes the aggregate's: a float16 one halved the model's precision and
    overflowed to inf.
    """
    if update.dtype == model.dtype:
        return True
    return update.dtype.kind == model.dtype.kind == "f" and update.dtype.itemsize >= 4
