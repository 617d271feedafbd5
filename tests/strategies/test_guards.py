"""Tests of UpdateGuard around Flower's real FedAvg, on replies built the way Flower builds them."""

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from strategies.guards import (
    EMPTY_UPDATES,
    FAILED,
    REASONS,
    REJECTED_MALFORMED,
    REJECTED_NONFINITE,
    REJECTED_NORM,
    UPDATE_NORM_MAX,
    UPDATE_NORM_MEDIAN,
    UpdateGuard,
)
from tests.strategies.conftest import answer, grid

GLOBAL = {"w": np.zeros((2, 2), dtype=np.float32), "b": np.zeros(3, dtype=np.float32)}


def arrays(offset: float, nan: bool = False) -> ArrayRecord:
    values = {key: value + offset for key, value in GLOBAL.items()}
    if nan:
        values["b"][1] = np.nan
    return ArrayRecord({key: Array(value) for key, value in values.items()})


def reply(node: int, record: ArrayRecord, metrics: dict) -> Message:
    return answer(node, RecordDict({"arrays": record, "metrics": MetricRecord(metrics)}))


def guard(max_update_norm: float | None = 5.0) -> UpdateGuard:
    strategy = UpdateGuard(FedAvg(min_available_nodes=1, min_train_nodes=1), max_update_norm=max_update_norm)
    messages = list(strategy.configure_train(1, arrays(0.0), ConfigRecord(), grid((11, 12, 13))))
    assert len(messages) == 3 and messages[0].content["arrays"]["w"].numpy().shape == (2, 2)
    return strategy


def test_update_guard_kept_replies_give_example_weighted_mean() -> None:
    strategy = guard()
    replies = [
        reply(11, arrays(1.0), {"num-examples": 10, "loss": 2.0}),
        reply(12, arrays(1.5), {"num-examples": 30, "loss": 1.0}),
    ]
    aggregated, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(aggregated["w"].numpy(), np.full((2, 2), (10 * 1.0 + 30 * 1.5) / 40))
    assert metrics["loss"] == pytest.approx((10 * 2.0 + 30 * 1.0) / 40)
    assert metrics[REJECTED_NONFINITE] == 0 and metrics[REJECTED_NORM] == 0
    # the kept updates' norms, for choosing max_update_norm or dp_clip: sqrt(7) and 1.5 sqrt(7)
    assert metrics[UPDATE_NORM_MEDIAN] == pytest.approx(1.25 * np.sqrt(7))
    assert metrics[UPDATE_NORM_MAX] == pytest.approx(1.5 * np.sqrt(7))
    quiet = UpdateGuard(FedAvg(min_available_nodes=1, min_train_nodes=1), report_norms=False)  # private runs
    list(quiet.configure_train(1, arrays(0.0), ConfigRecord(), grid((11, 12, 13))))
    _, metrics = quiet.aggregate_train(1, replies)
    assert UPDATE_NORM_MAX not in metrics and UPDATE_NORM_MEDIAN not in metrics and "loss" in metrics


def test_update_guard_measures_updates_from_the_global_model() -> None:
    """Norms of reply minus global model, on a model far from zero: updates of 1, 2 and 6 (times sqrt 7); the
    median is the middle one; an update exactly at the bound is kept."""
    strategy = UpdateGuard(FedAvg(min_available_nodes=1, min_train_nodes=1), max_update_norm=None)
    list(strategy.configure_train(1, arrays(10.0), ConfigRecord(), grid((11, 12, 13))))
    replies = [
        reply(node, arrays(10.0 + step), {"num-examples": 10}) for node, step in ((11, 1), (12, 2), (13, 6))
    ]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics[UPDATE_NORM_MEDIAN] == pytest.approx(2 * np.sqrt(7))  # the mean would be 3 sqrt(7)
    assert metrics[UPDATE_NORM_MAX] == pytest.approx(6 * np.sqrt(7))
    strategy = guard(max_update_norm=5.0)  # global model zero
    at_bound = ArrayRecord(
        {"w": Array(np.zeros((2, 2), np.float32)), "b": Array(np.array([3, 4, 0], np.float32))}
    )
    _, metrics = strategy.aggregate_train(1, [reply(11, at_bound, {"num-examples": 10})])
    assert metrics[REJECTED_NORM] == 0 and metrics[UPDATE_NORM_MAX] == 5.0


def test_update_guard_takes_the_metric_keys_most_replies_carry_even_when_the_odd_one_comes_first() -> None:
    strategy = guard()
    replies = [
        reply(11, arrays(1.0), {"num-examples": 10, "extra": 1.0}),
        reply(12, arrays(1.0), {"num-examples": 10}),
        reply(13, arrays(1.0), {"num-examples": 10}),
    ]
    aggregated, metrics = strategy.aggregate_train(1, replies)
    assert aggregated is not None and metrics[REJECTED_MALFORMED] == 1


def test_update_guard_nan_and_oversized_replies_rejected_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    strategy = guard(max_update_norm=5.0)
    replies = [
        reply(11, arrays(1.0), {"num-examples": 10}),  # norm sqrt(7) ~ 2.6: kept
        reply(12, arrays(1.0, nan=True), {"num-examples": 10}),
        reply(13, arrays(2.0), {"num-examples": 10}),  # norm sqrt(28) ~ 5.3 > 5
    ]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        aggregated, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(aggregated["b"].numpy(), np.ones(3))  # only the first reply
    assert metrics[REJECTED_NONFINITE] == 1 and metrics[REJECTED_NORM] == 1
    assert "node 12 rejected: rejected-nonfinite" in caplog.text
    _, metrics = strategy.aggregate_train(
        2, [reply(13, arrays(3.0), {"num-examples": 5}), reply(11, arrays(0.5), {"num-examples": 5})]
    )
    assert metrics[REJECTED_NORM] == 1 and metrics[REJECTED_NONFINITE] == 0  # each round counts its own


def test_update_guard_no_norm_bound_keeps_large_updates() -> None:
    aggregated, metrics = guard(max_update_norm=None).aggregate_train(
        1, [reply(11, arrays(100.0), {"num-examples": 1})]
    )
    np.testing.assert_allclose(aggregated["w"].numpy(), np.full((2, 2), 100.0))
    assert metrics[REJECTED_NORM] == 0


def test_update_guard_missing_negative_or_infinite_examples_and_wrong_shapes_rejected() -> None:
    strategy = guard()
    wrong_shape = ArrayRecord(
        {"w": Array(np.zeros(4, dtype=np.float32)), "b": Array(np.zeros(3, dtype=np.float32))}
    )
    replies = [
        reply(11, arrays(1.0), {"loss": 1.0}),
        reply(12, arrays(1.0), {"num-examples": -1}),
        reply(13, wrong_shape, {"num-examples": 4}),
    ]
    aggregated, metrics = strategy.aggregate_train(1, replies)
    assert aggregated is None  # none left: no aggregate, and the round's line still counts the rejections
    assert metrics[REJECTED_MALFORMED] == 3 and metrics[REJECTED_NORM] == 0
    # an infinite count would make every weight inf / inf = NaN: rejected, and the finite reply alone is kept
    aggregated, metrics = strategy.aggregate_train(
        2,
        [reply(11, arrays(1.0), {"num-examples": float("inf")}), reply(12, arrays(1.5), {"num-examples": 5})],
    )
    np.testing.assert_allclose(aggregated["w"].numpy(), np.full((2, 2), 1.5))
    assert metrics[REJECTED_MALFORMED] == 1


def test_replies_unlike_the_global_model_or_the_rounds_other_replies_are_malformed() -> None:
    """Each was let through: other metric keys ended the run in FedAvg, a float16 first reply became the model's
    dtype (and overflowed), and FedAvgM pairs a reordered reply's arrays with the model's by position."""
    strategy = guard(None)
    half = ArrayRecord({key: Array((value + 1).astype(np.float16)) for key, value in GLOBAL.items()})
    reordered = ArrayRecord({key: Array(GLOBAL[key] + 1) for key in reversed(GLOBAL)})
    replies = [
        reply(11, half, {"num-examples": 1}),
        reply(12, reordered, {"num-examples": 1}),
        reply(13, arrays(1.0), {"num-examples": 1, "extra": 1.0}),
        reply(14, arrays(2.0), {"num-examples": 1}),
        reply(15, arrays(4.0), {"num-examples": 3}),
    ]
    aggregated, metrics = strategy.aggregate_train(1, replies)
    assert metrics[REJECTED_MALFORMED] == 3
    np.testing.assert_allclose(aggregated["w"].numpy(), np.full((2, 2), (2.0 + 3 * 4.0) / 4))
    assert list(aggregated) == list(GLOBAL) and aggregated["w"].numpy().dtype == np.float32


def test_float32_updates_of_a_float64_model_are_kept() -> None:
    """FedAdam's aggregate is float64 while devices reply float32: rejecting that stopped training at round 2."""
    strategy = UpdateGuard(FedAvg(min_available_nodes=1, min_train_nodes=1))
    wide = ArrayRecord({key: Array(value.astype(np.float64)) for key, value in GLOBAL.items()})
    list(strategy.configure_train(2, wide, ConfigRecord(), grid((11, 12))))
    aggregated, metrics = strategy.aggregate_train(2, [reply(11, arrays(1.0), {"num-examples": 2})])
    assert metrics[REJECTED_MALFORMED] == 0
    np.testing.assert_allclose(aggregated["w"].numpy(), np.full((2, 2), 1.0))


def test_failed_replies_are_counted_and_a_round_of_failures_logs_a_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    strategy = guard()
    failed = answer(12, Error(code=0, reason="node 12 is down"))
    with caplog.at_level(logging.WARNING):
        aggregated, metrics = strategy.aggregate_train(1, [failed])
    assert aggregated is None and metrics[FAILED] == 1
    assert "every reply failed" in caplog.text and "node 12 is down" in caplog.text
    aggregated, metrics = strategy.aggregate_train(2, [failed, reply(11, arrays(1.0), {"num-examples": 2})])
    assert metrics[FAILED] == 1 and metrics[REJECTED_MALFORMED] == 0
    np.testing.assert_allclose(aggregated["w"].numpy(), np.full((2, 2), 1.0))


def test_update_guard_skips_replies_of_nodes_with_no_example_without_calling_them_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node with nothing to train on replies its unchanged model with weight 0: left out, counted apart."""
    strategy = guard()
    with caplog.at_level(logging.WARNING):
        aggregated, metrics = strategy.aggregate_train(
            1, [reply(11, arrays(0.0), {"num-examples": 0}), reply(12, arrays(1.5), {"num-examples": 3})]
        )
    np.testing.assert_allclose(aggregated["w"].numpy(), np.full((2, 2), 1.5))  # the empty one weighs nothing
    assert metrics[EMPTY_UPDATES] == 1 and metrics[REJECTED_MALFORMED] == 0
    assert "rejected" not in caplog.text
    # a round of empty nodes only: no aggregate (FedAvg would divide by a total weight of 0), the count kept
    aggregated, metrics = strategy.aggregate_train(2, [reply(11, arrays(0.0), {"num-examples": 0})])
    assert aggregated is None and metrics[EMPTY_UPDATES] == 1
    # weight 0 does not launder a non-finite update
    _, metrics = strategy.aggregate_train(
        3,
        [reply(11, arrays(0.0, nan=True), {"num-examples": 0}), reply(12, arrays(1.0), {"num-examples": 1})],
    )
    assert metrics[EMPTY_UPDATES] == 0
    assert {reason: metrics[reason] for reason in REASONS} == {
        r: int(r == REJECTED_NONFINITE) for r in REASONS
    }


def test_a_private_run_averages_a_node_with_no_example_as_the_zero_update_it_is_and_counts_it() -> None:
    """Every node weighs 1 there (the noise assumes it): leaving one out would change the mean's size."""
    inner = FedAvg(min_available_nodes=1, min_train_nodes=1, weighted_by_key="nodes")
    strategy = UpdateGuard(inner, None, "nodes")
    list(strategy.configure_train(1, arrays(0.0), ConfigRecord(), grid((11, 12))))
    aggregated, metrics = strategy.aggregate_train(
        1,
        [
            reply(11, arrays(0.0), {"nodes": 1, "num-examples": 0}),
            reply(12, arrays(1.0), {"nodes": 1, "num-examples": 3}),
        ],
    )
    np.testing.assert_allclose(aggregated["w"].numpy(), np.full((2, 2), 0.5))
    assert metrics[EMPTY_UPDATES] == 1 and metrics[REJECTED_MALFORMED] == 0
