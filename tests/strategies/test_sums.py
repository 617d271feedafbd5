"""The replies' metrics: a train loss is a mean weighted by examples, counts and evaluation sums are the fleet's sums."""

import numpy as np
import pytest
from flwr.app import MetricRecord, RecordDict

from lsc4rec import records
from lsc4rec.config import RunConfig
from lsc4rec.outcomes import StageOutcome
from server.app import flower_strategy
from strategies.sums import sum_metrics, train_metrics
from tests.conftest import outcome_from_users


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
    assert merged[records.NODES] == 3  # the weighting key, which the mean drops, summed back (train-nodes)
    merged = train_metrics([node(0, 0.0)], records.NODES)
    assert records.TRAIN_LOSS not in merged and merged[records.NUM_EXAMPLES] == 0


def test_a_key_missing_from_one_reply_leaves_the_other_keys_summed() -> None:
    replies = [RecordDict({"metrics": MetricRecord(m)}) for m in ({"a": 1.0, "b": 2.0}, {"b": 3.0})]
    summed = sum_metrics(replies)
    assert summed["a"] == 1.0 and summed["b"] == 5.0


def test_metric_sums_fold_the_replies_to_the_whole_lists_sums_bit_for_bit() -> None:
    """The final evaluation folds its replies one by one (``MetricSums``): its report must not move by a bit.

    The reference is the sum over the whole list as it was written before the fold (numpy's sums over the
    stacked values, outcomes merged in order); the values are random, so that a pairwise sum and a sum in order
    differ in their last bits where they are not the same sum.
    """
    rng = np.random.default_rng(0)
    replies = []
    for _ in range(40):
        users = int(rng.integers(1, 30))
        score, stale, fresh = (
            rng.uniform(size=users),
            rng.uniform(size=(users, 3)),
            rng.uniform(size=(users, 3)),
        )
        metrics = {
            **outcome_from_users(score, stale, fresh, bins=10).to_metrics("test-drift"),
            records.GLOBAL_NDCG: float(rng.uniform() * 7),
            records.FALLBACKS: int(rng.integers(0, 5)),
            "one": [float(rng.uniform())],
            "two": rng.uniform(size=2).tolist(),
            records.SIGNAL_COUNTS: (rng.uniform(size=1000) * 9).tolist(),
        }
        replies.append(RecordDict({records.METRICS: MetricRecord(metrics)}))

    summed = sum_metrics(replies)
    metrics = [reply[records.METRICS] for reply in replies]
    whole = StageOutcome.sum(StageOutcome.from_metrics(m, "test-drift") for m in metrics).to_metrics(
        "test-drift"
    )
    for key in (records.GLOBAL_NDCG, records.FALLBACKS, "one", "two", records.SIGNAL_COUNTS):
        total = np.sum([np.asarray(m[key], dtype=float) for m in metrics], axis=0)
        whole[key] = total.tolist() if isinstance(metrics[0][key], list) else total.item()
    assert list(summed) == list(whole)
    assert all(summed[key] == whole[key] for key in whole), [k for k in whole if summed[k] != whole[k]]
    assert isinstance(summed[records.FALLBACKS], int)
    assert sum_metrics([]) == MetricRecord()


def test_metric_sums_refuse_a_list_whose_length_differs_between_replies() -> None:
    """numpy refused to stack them; added in place, a single number would have been added to every bin."""

    def reply(counts: list[float] | float) -> RecordDict:
        return RecordDict({records.METRICS: MetricRecord({records.SIGNAL_COUNTS: counts})})

    for odd in ([3.0], 3.0, [1.0, 2.0, 3.0]):
        with pytest.raises(ValueError, match=records.SIGNAL_COUNTS):
            sum_metrics([reply([1.0, 2.0]), reply(odd)])
    empty_first = [RecordDict({records.METRICS: MetricRecord()}), reply([1.0, 2.0])]
    assert sum_metrics(empty_first) == MetricRecord()  # the keys are the first record's, as ever
