"""Aggregating the nodes' replies' metrics: sums where they report sums and counts, means only for a loss.

Flower's FedAvg averages metrics weighted by ``num-examples``, which is right for a loss and wrong for counts
and sums. The nodes report collaborative-inference outcomes as sums (``lsc4rec.outcomes.StageOutcome``) and
counts, so the fleet's figure is their sum: pass :func:`sum_metrics` as FedAvg's ``evaluate_metrics_aggr_fn``,
and :func:`train_metrics` as its ``train_metrics_aggr_fn``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from lsc4rec import records
from lsc4rec.outcomes import StageOutcome

OUTCOME_MARK = "-alphas"  # every StageOutcome in a record carries f"{prefix}-alphas"
TRAIN_COUNTS = (records.FALLBACKS, records.NUM_EXAMPLES)  # train metrics that are counts, summed over nodes


def train_metrics(replies: Iterable[RecordDict], weighted_by_key: str = records.NUM_EXAMPLES) -> MetricRecord:
    """Flower's weighted mean of the train replies' metrics (the loss), but the fleet's sum of their counts.

    A mean of cloud fallbacks weighted by examples would report 1 for nodes that had 4 and 0. The mean is
    over the nodes that trained: a node with no example reports a loss of 0 that is no loss (a private run
    weighs it like any node), and a round where none trained has no loss at all.
    """
    replies = list(replies)
    trained = [r for r in replies if records.reply_metrics(r).get(records.NUM_EXAMPLES, 1) > 0]
    # the mean drops the weighting key itself
    merged = aggregate_metricrecords(trained, weighted_by_key) if trained else MetricRecord()
    summed = sum_metrics(replies)
    for key in (*TRAIN_COUNTS, weighted_by_key):
        if key in summed:
            merged[key] = summed[key]
    return merged


def sum_metrics(replies: Iterable[RecordDict], weighted_by_key: str = records.NUM_EXAMPLES) -> MetricRecord:
    """Sum every metric of ``replies`` (lists elementwise); merge StageOutcomes with ``StageOutcome.merge``.

    ``weighted_by_key`` is accepted for Flower's signature; sums need no weights.
    """
    sums = MetricSums()
    for reply in replies:
        sums.add(reply)
    return sums.result()


class MetricSums:
    """:func:`sum_metrics` one reply at a time, so that a fold over the fleet's replies holds none of them.

    The final evaluation of 610 one-user nodes would otherwise hold about 250 MiB of replies before summing.
    The keys are the first record's. The sums are :func:`sum_metrics`'s of the whole list, bit for bit: outcomes
    merge in order; lists of two or more add elementwise in order, as numpy's sum over the first axis of their
    stack does; and single numbers (and shorter lists), whose numpy sum is pairwise, wait for the end (a few per
    node). Values of one key whose shapes differ are an error, as they were to numpy.
    """

    def __init__(self) -> None:
        self._started = False
        self._outcomes: dict[str, StageOutcome] = {}  # by prefix
        self._owned: set[str] = set()  # the keys the outcomes stand for
        self._lists: dict[str, np.ndarray] = {}  # running elementwise sums of lists of two or more
        self._singles: dict[str, list] = {}  # every value of the other keys, summed at the end
        # each key's first value, in the first record's order: a list sums to a list, an int to an int
        self._kinds: dict[str, object] = {}

    def add(self, reply: RecordDict) -> None:
        """Add every metric record of ``reply``."""
        for metrics in reply.metric_records.values():
            self._add(metrics)

    def _add(self, metrics: MetricRecord) -> None:
        if not self._started:
            self._started = True
            prefixes = [key[: -len(OUTCOME_MARK)] for key in metrics if key.endswith(OUTCOME_MARK)]
            for prefix in prefixes:
                self._outcomes[prefix] = StageOutcome.from_metrics(metrics, prefix)
                self._owned.update(self._outcomes[prefix].to_metrics(prefix))
            self._kinds = {key: value for key, value in metrics.items() if key not in self._owned}
        else:
            for prefix, total in self._outcomes.items():
                self._outcomes[prefix] = total.merge(StageOutcome.from_metrics(metrics, prefix))
        for key, kind in self._kinds.items():
            if key not in metrics:
                continue
            value = metrics[key]
            if isinstance(kind, list) and len(kind) > 1:
                value = np.asarray(value, dtype=float)
                if value.shape != (len(kind),):
                    raise ValueError(
                        f"{key} holds {len(kind)} values in one reply and {value.shape} in another."
                    )
                if key in self._lists:
                    self._lists[key] += value
                else:
                    self._lists[key] = value.copy()
            else:
                self._singles.setdefault(key, []).append(value)

    def result(self) -> MetricRecord:
        """The sums so far (an empty record before the first reply)."""
        merged: dict = {}
        for prefix, total in self._outcomes.items():
            merged.update(total.to_metrics(prefix))
        for key, kind in self._kinds.items():
            if key in self._lists:
                merged[key] = self._lists[key].tolist()
                continue
            total = np.sum([np.asarray(v, dtype=float) for v in self._singles[key]], axis=0)
            merged[key] = total.tolist() if isinstance(kind, list) else _scalar(total, kind)
        return MetricRecord(merged)


def _scalar(total: np.ndarray, example: object) -> int | float:
    return int(total) if isinstance(example, int) else float(total)
