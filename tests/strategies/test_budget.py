"""Tests of RequestBudget around Flower's real FedAvg: tau calibration on known histograms, config, rate."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from lsc4rec import records
from strategies.budget import RequestBudget
from tests.strategies.conftest import FakeGrid

BINS = 50


def evaluate_reply(node: int, hist: np.ndarray, requests: int, examples: int) -> Message:
    instruction = Message(
        RecordDict({"config": ConfigRecord()}), dst_node_id=node, message_type=MessageType.EVALUATE
    )
    metrics = {
        records.HIST: hist.tolist(),
        records.REQUESTS: requests,
        records.USERS: int(hist.sum()),
        "num-examples": examples,
    }
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=instruction)


def budget(value: float = 0.05) -> RequestBudget:
    return RequestBudget(
        FedAvg(min_available_nodes=1, min_evaluate_nodes=1, min_train_nodes=1), budget=value, bins=BINS
    )


def test_request_budget_uniform_histogram_gives_tau_meeting_budget() -> None:
    strategy = budget(0.05)
    replies = [evaluate_reply(11, np.full(BINS, 2.0), 0, 100), evaluate_reply(12, np.full(BINS, 8.0), 0, 400)]
    metrics = strategy.aggregate_evaluate(1, replies)
    assert strategy.tau == pytest.approx(0.95)
    assert (
        metrics[records.NEXT_TAU] == pytest.approx(0.95) and metrics[records.TAU] == 1.0
    )  # round 1 ran with the initial tau
    assert (
        metrics[records.HIST] == [10.0] * BINS and metrics[records.USERS] == 500
    )  # sums, not weighted means


def test_request_budget_merges_histograms_by_addition_not_weighted_mean() -> None:
    # Node 11: 90 users in the top bin; node 12: 10 users in the bottom bin, but far more examples.
    top, bottom = np.zeros(BINS), np.zeros(BINS)
    top[-1], bottom[0] = 90.0, 10.0
    strategy = budget(0.45)
    strategy.aggregate_evaluate(1, [evaluate_reply(11, top, 0, 1), evaluate_reply(12, bottom, 0, 1000)])
    # 45 of 100 users above tau: half of the top bin [0.98, 1].
    assert strategy.tau == pytest.approx(0.99)


def test_request_budget_sends_current_tau_in_train_and_evaluate_config() -> None:
    strategy = budget(0.2)
    first = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), FakeGrid()))
    assert {m.content["config"][records.TAU] for m in first} == {1.0}
    strategy.aggregate_evaluate(1, [evaluate_reply(11, np.full(BINS, 1.0), 0, 1)])
    for messages in (
        strategy.configure_train(2, ArrayRecord(), ConfigRecord(), FakeGrid()),
        strategy.configure_evaluate(2, ArrayRecord(), ConfigRecord(), FakeGrid()),
    ):
        messages = list(messages)
        assert len(messages) == 2
        assert all(m.content["config"][records.TAU] == pytest.approx(0.8) for m in messages)


def test_request_budget_reports_realized_rate_of_the_round() -> None:
    strategy = budget(0.1)
    replies = [evaluate_reply(11, np.full(BINS, 1.0), 7, 1), evaluate_reply(12, np.full(BINS, 1.0), 3, 1)]
    metrics = strategy.aggregate_evaluate(3, replies)
    assert metrics[records.REALIZED_RATE] == pytest.approx(10 / 100) and metrics[records.REQUESTS] == 10
    assert strategy.realized_rates == {3: pytest.approx(0.1)}


def test_request_budget_without_histograms_keeps_tau_and_inner_metrics() -> None:
    strategy = budget(0.1)
    instruction = Message(
        RecordDict({"config": ConfigRecord()}), dst_node_id=11, message_type=MessageType.EVALUATE
    )
    plain = Message(RecordDict({"m": MetricRecord({"loss": 0.5, "num-examples": 2})}), reply_to=instruction)
    metrics = strategy.aggregate_evaluate(1, [plain])
    assert (
        strategy.tau == 1.0 and metrics["loss"] == pytest.approx(0.5) and records.REALIZED_RATE not in metrics
    )
