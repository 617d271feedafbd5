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
    """Sum every metric of ``replies`` (lists elementwise); merge StageOutcomes with ``StageOutcome.sum``.

    ``weighted_by_key`` is accepted for Flower's signature; sums need no weights.
    """
    metrics = [m for reply in replies for m in reply.metric_records.values()]
    if not metrics:
        return MetricRecord()
    prefixes = [key[: -len(OUTCOME_MARK)] for key in metrics[0] if key.endswith(OUTCOME_MARK)]
    merged: dict = {}
    for prefix in prefixes:
        merged.update(
            StageOutcome.sum(StageOutcome.from_metrics(m, prefix) for m in metrics).to_metrics(prefix)
        )
    for key in metrics[0]:
        if key in merged:
            continue
        values = [m[key] for m in metrics if key in m]
        total = np.sum([np.asarray(v, dtype=float) for v in values], axis=0)
        merged[key] = total.tolist() if isinstance(values[0], list) else _scalar(total, values[0])
    return MetricRecord(merged)


def _scalar(total: np.ndarray, example: object) -> int | float:
    return int(total) if isinstance(example, int) else float(total)
