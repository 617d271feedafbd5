"""The train replies' metrics: the loss is a mean weighted by examples, the counts are the fleet's sums."""

import pytest
from flwr.app import MetricRecord, RecordDict

from lsc4rec import records
from lsc4rec.config import RunConfig
from server.app import flower_strategy
from strategies.sums import train_metrics


def test_train_metrics_average_the_loss_and_sum_the_counts() -> None:
    replies = [
        RecordDict(
            {
                "metrics": MetricRecord(
                    {records.NUM_EXAMPLES: 10, records.TRAIN_LOSS: 2.0, records.FALLBACKS: 4}
                )
            }
        ),
        RecordDict(
            {
                "metrics": MetricRecord(
                    {records.NUM_EXAMPLES: 30, records.TRAIN_LOSS: 1.0, records.FALLBACKS: 0}
                )
            }
        ),
    ]
    merged = train_metrics(replies, records.NUM_EXAMPLES)
    assert merged[records.TRAIN_LOSS] == pytest.approx((10 * 2.0 + 30 * 1.0) / 40)
    assert (
        merged[records.FALLBACKS] == 4 and merged[records.NUM_EXAMPLES] == 40
    )  # FedAvg's mean would say 1.0
    assert flower_strategy(RunConfig()).train_metrics_aggr_fn is train_metrics


def test_train_metrics_leave_nodes_with_no_example_out_of_the_loss() -> None:
    """A private run weighs every node alike: a node that trained on nothing must not pull the mean to 0."""

    def node(examples: int, loss: float) -> RecordDict:
        metrics = {records.NUM_EXAMPLES: examples, records.TRAIN_LOSS: loss, records.NODES: 1}
        return RecordDict({"metrics": MetricRecord(metrics)})

    merged = train_metrics([node(5, 2.0), node(0, 0.0), node(7, 4.0)], records.NODES)
    assert merged[records.TRAIN_LOSS] == pytest.approx(3.0) and merged[records.NUM_EXAMPLES] == 12
    merged = train_metrics([node(0, 0.0)], records.NODES)
    assert records.TRAIN_LOSS not in merged and merged[records.NUM_EXAMPLES] == 0
