"""Tests of ItemWeighting inside UpdateGuard around Flower's real FedAvg and FedAvgM, on hand-built replies."""

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedAvgM, Strategy

from strategies.guards import REJECTED_MALFORMED, UpdateGuard
from strategies.item_rows import ItemWeighting
from tests.strategies.conftest import answer, grid

ROWS, OTHER, COUNTS = "item_embedding.weight", "proj", "item-counts"
GLOBAL = {ROWS: np.zeros((3, 2), dtype=np.float32), OTHER: np.zeros(2, dtype=np.float32)}


def reply(node: int, value: float, examples: int, counts: list[float] | None, extra: str = COUNTS) -> Message:
    """A train reply whose every weight equals ``value``, with per-row ``counts`` under ``extra``."""
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.full_like(v, value)) for k, v in GLOBAL.items()}),
            "metrics": MetricRecord({"num-examples": examples}),
        }
    )
    if counts is not None:
        content[extra] = ArrayRecord({"counts": Array(np.array(counts, dtype=np.float32))})
    return answer(node, content)


def weighted(inner: Strategy) -> UpdateGuard:
    strategy = UpdateGuard(ItemWeighting(inner), extra_records=(COUNTS,))
    global_arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    list(strategy.configure_train(1, global_arrays, ConfigRecord(), grid((11, 12))))
    return strategy


def expected_rows(values: list[float], examples: list[int], counts: list[list[float]]) -> np.ndarray:
    """Row i: the mean of the values weighted by count[c, i] + n_c / N (the smoothing share)."""
    share = np.array(examples) / sum(examples)
    weights = np.array(counts) + share[:, None]
    return (weights * np.array(values)[:, None]).sum(0) / weights.sum(0)


def test_item_rows_follow_the_counts_other_arrays_the_examples() -> None:
    counts = [[0.0, 4.0, 0.0], [0.0, 0.0, 9.0]]  # row 0 held by nobody: FedAvg's weights
    aggregated, _ = weighted(FedAvg(min_available_nodes=1, min_train_nodes=1)).aggregate_train(
        1, [reply(11, 1.0, 10, counts[0]), reply(12, 3.0, 30, counts[1])]
    )
    rows = aggregated[ROWS].numpy()
    np.testing.assert_allclose(rows[:, 0], expected_rows([1.0, 3.0], [10, 30], counts), rtol=1e-6)
    assert rows[0, 0] == pytest.approx((10 * 1.0 + 30 * 3.0) / 40)
    assert rows[1, 0] < 1.5 and rows[2, 0] > 2.9  # FedAvg: 2.5 for both; each row follows its holder
    np.testing.assert_allclose(aggregated[OTHER].numpy(), np.full(2, (10 * 1.0 + 30 * 3.0) / 40))


def test_item_rows_reach_fedavgm_as_its_pseudo_gradient() -> None:
    counts = [[0.0, 4.0, 0.0], [0.0, 0.0, 9.0]]
    server = FedAvgM(min_available_nodes=1, min_train_nodes=1, server_learning_rate=2.0)
    aggregated, _ = weighted(server).aggregate_train(
        1, [reply(11, 1.0, 10, counts[0]), reply(12, 3.0, 30, counts[1])]
    )
    want = 2.0 * expected_rows([1.0, 3.0], [10, 30], counts)  # the global rows are zero
    np.testing.assert_allclose(aggregated[ROWS].numpy()[:, 1], want, rtol=1e-5)


@pytest.mark.parametrize("bad", [[0.0, 5.0, -1.0], [0.0, 5.0]], ids=["negative", "one-row-short"])
def test_missing_or_bad_counts_get_the_smoothing_weight_and_unknown_records_are_rejected(
    caplog: pytest.LogCaptureFixture, bad: list[float]
) -> None:
    strategy = weighted(FedAvg(min_available_nodes=1, min_train_nodes=1))
    replies = [
        reply(11, 1.0, 10, bad),  # a negative count, or counts for other rows: invalid
        reply(12, 3.0, 10, [0.0, 5.0, 5.0]),
        reply(13, 9.0, 10, [1.0, 1.0, 1.0], extra="surprise"),  # an ArrayRecord nobody asked for
    ]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        aggregated, metrics = strategy.aggregate_train(1, replies)
    assert metrics[REJECTED_MALFORMED] == 1
    assert "node 11 sent no valid 'item-counts'" in caplog.text
    want = expected_rows([1.0, 3.0], [10, 10], [[0.0, 0.0, 0.0], [0.0, 5.0, 5.0]])
    np.testing.assert_allclose(aggregated[ROWS].numpy()[:, 0], want, rtol=1e-6)
