"""Tests of RequestBudget around Flower's real FedAvg: tau and signal from known outcomes, config, rate."""

import json
import logging

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from lsc4rec import records
from server.app import _unusable
from strategies.budget import RequestBudget
from tests.conftest import ALPHAS, outcome_from_users, two_signals
from tests.strategies.conftest import answer, grid

BINS = 50


def users_of(hist: np.ndarray) -> np.ndarray:
    """Signal scores of users spread as ``hist`` says: ``hist[b]`` users at the centre of bin b."""
    return np.repeat((np.arange(len(hist)) + 0.5) / len(hist), hist.astype(int))


def evaluate_reply(
    node: int,
    hist: np.ndarray,
    requests: int,
    examples: int,
    measures: tuple[str, ...] = ("drift",),
    helped: dict[str, np.ndarray] | None = None,
    valid_hist: np.ndarray | None = None,
) -> Message:
    """A node's evaluate reply: every signal binned as ``hist`` says, on validation and test.

    ``helped[m]`` marks the users (in ``hist`` order) whom a fresh list helps on validation when signal m
    orders them: there, signal m's bins carry the gain; nobody gains on test or by default. ``valid_hist``
    (as many users as ``hist``) bins the validation users otherwise.
    """
    score = users_of(hist)
    valid_score = score if valid_hist is None else users_of(valid_hist)
    zeros = np.zeros((len(score), len(ALPHAS)))
    metrics: dict = {records.REQUESTS: requests, "num-examples": examples}
    for measure in measures:
        gain = zeros.copy()
        if helped is not None and measure in helped:
            gain[helped[measure]] = 1.0
        for stage, users, fresh in (("valid", valid_score, gain), ("test", score, zeros)):
            outcome = outcome_from_users(users, zeros, fresh, BINS)
            metrics.update(outcome.to_metrics(records.outcome_prefix(stage, measure)))
    return answer(node, RecordDict({"metrics": MetricRecord(metrics)}), MessageType.EVALUATE)


def budget(value: float = 0.05, measures: tuple[str, ...] = ("drift",), window: int = 1) -> RequestBudget:
    return RequestBudget(
        FedAvg(min_available_nodes=1, min_evaluate_nodes=1, min_train_nodes=1),
        budget=value,
        bins=BINS,
        measures=measures,
        window=window,
        margin_se=1.0,
    )


@pytest.mark.parametrize(("margin", "chosen"), [(1.0, "1"), (0.0, "0")])
def test_the_budget_chooses_its_signal_at_the_alpha_the_fleet_serves(margin: float, chosen: str) -> None:
    """Validation's best blend is within one se of SRM-only; at each α a different signal gates best."""
    strategy = RequestBudget(FedAvg(), budget=0.25, bins=BINS, measures=("0", "1"), margin_se=margin)
    metrics: dict = {records.REQUESTS: 0, "num-examples": 4}
    for stage in ("valid", "test"):
        for measure, outcome in two_signals(BINS).items():
            metrics.update(outcome.to_metrics(records.outcome_prefix(stage, measure)))
    strategy.aggregate_evaluate(
        1, [answer(11, RecordDict({"metrics": MetricRecord(metrics)}), MessageType.EVALUATE)]
    )
    assert strategy.measure == chosen


def test_request_budget_uniform_histogram_gives_tau_meeting_budget() -> None:
    strategy = budget(0.05)
    assert strategy.calibration_users == 0
    replies = [evaluate_reply(11, np.full(BINS, 2.0), 0, 100), evaluate_reply(12, np.full(BINS, 8.0), 0, 400)]
    metrics = strategy.aggregate_evaluate(1, replies)
    assert strategy.tau == pytest.approx(0.95)
    assert (
        metrics[records.NEXT_TAU] == pytest.approx(0.95) and metrics[records.TAU] == 1.0
    )  # round 1 ran with the initial tau
    assert metrics[records.USERS] == 500  # sums, not weighted means
    assert strategy.calibration_users == 500  # the log says how large a sample τ came from


def test_request_budget_calibrates_tau_on_the_test_time_signals_not_the_validation_ones() -> None:
    """The gate serves the lists the devices hold at test time: their histogram sets τ (validation's, whose
    users sit in the lower half here, would give 0.25)."""
    lower, upper = np.zeros(BINS), np.zeros(BINS)
    lower[: BINS // 2], upper[BINS // 2 :] = 4, 4
    strategy = budget(0.5)
    strategy.aggregate_evaluate(1, [evaluate_reply(11, upper, 0, 100, valid_hist=lower)])
    assert strategy.tau == pytest.approx(0.75)


def test_request_budget_merges_histograms_by_addition_not_weighted_mean() -> None:
    # Node 11: 90 users in the top bin; node 12: 10 users in the bottom bin, but far more examples.
    top, bottom = np.zeros(BINS), np.zeros(BINS)
    top[-1], bottom[0] = 90.0, 10.0
    strategy = budget(0.45)
    strategy.aggregate_evaluate(1, [evaluate_reply(11, top, 0, 1), evaluate_reply(12, bottom, 0, 1000)])
    # 45 of 100 users above tau: half of the top bin [0.98, 1].
    assert strategy.tau == pytest.approx(0.99)


def test_request_budget_pools_the_last_window_rounds() -> None:
    # Round 1: 100 users in the bottom half; rounds 2 and 3: 100 users in the top half each.
    low, high = np.zeros(BINS), np.zeros(BINS)
    low[:25], high[25:] = 4.0, 4.0
    strategy = budget(0.5, window=2)
    strategy.aggregate_evaluate(1, [evaluate_reply(11, low, 0, 1)])
    assert strategy.tau == pytest.approx(0.25)  # one round: half of round 1's users above tau
    strategy.aggregate_evaluate(2, [evaluate_reply(11, high, 0, 1)])
    # rounds 1 and 2 pooled: the top half of 200 users are round 2's, all above 0.5
    assert strategy.tau == pytest.approx(0.5)
    assert (strategy.calibration_users, strategy.calibration_rounds) == (200, 2)
    metrics = strategy.aggregate_evaluate(3, [evaluate_reply(11, high, 3, 1)])
    # round 1 has left the window: rounds 2 and 3 alike, so tau is their median
    assert strategy.tau == pytest.approx(0.75)
    assert (strategy.calibration_users, strategy.calibration_rounds) == (200, 2)
    assert metrics[records.REALIZED_RATE] == pytest.approx(0.03)  # the round's own rate, not the window's


def test_request_budget_picks_the_signal_on_the_pooled_validation() -> None:
    # Round 1 favours kendall strongly (ten users helped), round 2 favours drift weakly (five): pooled, kendall
    # still wins, where round 2 alone would switch to drift.
    hist = np.full(BINS, 2.0)
    measures = ("drift", "kendall")
    strategy = budget(0.1, measures=measures, window=2)
    helped_first = {"drift": np.arange(10), "kendall": np.arange(90, 100)}
    helped_second = {"drift": np.arange(95, 100), "kendall": np.arange(5)}
    strategy.aggregate_evaluate(1, [evaluate_reply(11, hist, 0, 1, measures, helped_first)])
    strategy.aggregate_evaluate(2, [evaluate_reply(11, hist, 0, 1, measures, helped_second)])
    assert strategy.measure == "kendall"
    alone = budget(0.1, measures=measures)
    alone.aggregate_evaluate(2, [evaluate_reply(11, hist, 0, 1, measures, helped_second)])
    assert alone.measure == "drift"


def test_a_saved_window_calibrates_a_resumed_budget_as_the_uninterrupted_one() -> None:
    # the scenario above, stopped after round 1: the window saved as JSON (a checkpoint) brings round 1 back
    hist, measures = np.full(BINS, 2.0), ("drift", "kendall")
    helped_first = {"drift": np.arange(10), "kendall": np.arange(90, 100)}
    helped_second = {"drift": np.arange(95, 100), "kendall": np.arange(5)}
    first = budget(0.1, measures=measures, window=2)
    first.aggregate_evaluate(1, [evaluate_reply(11, hist, 0, 1, measures, helped_first)])
    saved = json.loads(json.dumps(first.window_state()))
    resumed = RequestBudget(
        FedAvg(), 0.1, BINS, measures, first.tau, first.measure, 2, initial_window=saved, margin_se=1.0
    )
    for strategy in (first, resumed):
        strategy.aggregate_evaluate(2, [evaluate_reply(11, hist, 0, 1, measures, helped_second)])
    assert resumed.measure == first.measure == "kendall"  # a window started afresh would pick drift
    assert (resumed.tau, resumed.calibration_users) == (first.tau, first.calibration_users)
    assert json.dumps(resumed.window_state()) == json.dumps(first.window_state())


def test_request_budget_sends_current_tau_and_signal_in_evaluate_config() -> None:
    strategy = budget(0.2)
    first = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid()))
    assert {m.content["config"][records.TAU] for m in first} == {1.0}
    assert {m.content["config"][records.MEASURE] for m in first} == {"drift"}
    strategy.aggregate_evaluate(1, [evaluate_reply(11, np.full(BINS, 1.0), 0, 1)])
    messages = list(strategy.configure_evaluate(2, ArrayRecord(), ConfigRecord(), grid()))
    assert len(messages) == 2
    assert all(m.content["config"][records.TAU] == pytest.approx(0.8) for m in messages)
    training = list(strategy.configure_train(2, ArrayRecord(), ConfigRecord(), grid()))
    assert len(training) == 2 and all(records.TAU not in m.content["config"] for m in training)


class ConfigPerMessage(FedAvg):
    """FedAvg whose evaluation messages each hold a config of their own (FedAvg's share one)."""

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        return [
            Message(
                RecordDict(
                    {"arrays": m.content["arrays"], "config": ConfigRecord(dict(m.content["config"]))}
                ),
                dst_node_id=m.metadata.dst_node_id,
                message_type=m.metadata.message_type,
            )
            for m in super().configure_evaluate(server_round, arrays, config, grid)
        ]


def test_a_budget_given_the_samples_histogram_gates_each_round_on_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``sample_counts`` (a gated fleet): τ from the sampled nodes' histogram under the round's model, sent
    with each of the round's messages and reported as its τ; the window's τ when the histogram cannot be had."""
    asked: list[tuple[list[int], ArrayRecord, str]] = []
    histogram: list[np.ndarray | None] = [np.full(BINS, 1.0)]

    def sample_counts(nodes: list[int], arrays: ArrayRecord, measure: str) -> np.ndarray | None:
        asked.append((nodes, arrays, measure))
        return histogram[0]

    strategy = RequestBudget(
        ConfigPerMessage(min_available_nodes=1), 0.2, BINS, sample_counts=sample_counts, margin_se=1.0
    )
    model = ArrayRecord()
    messages = list(strategy.configure_evaluate(1, model, ConfigRecord(), grid()))
    [(nodes, sent, measure)] = asked
    assert (sorted(nodes), measure) == ([11, 12], "drift") and sent is model  # the sample, the round's model
    assert [m.content["config"][records.TAU] for m in messages] == [pytest.approx(0.8)] * 2
    lower = np.zeros(BINS)
    lower[: BINS // 2] = 1.0  # the window: every user in the lower half, so its τ is 0.4
    metrics = strategy.aggregate_evaluate(1, [evaluate_reply(11, lower, 0, 1)])
    assert metrics[records.TAU] == pytest.approx(0.8) and metrics[records.NEXT_TAU] == pytest.approx(0.4)
    nobody = RequestBudget(
        FedAvg(fraction_evaluate=0.0), 0.2, BINS, sample_counts=sample_counts, margin_se=1.0
    )
    assert list(nobody.configure_evaluate(1, model, ConfigRecord(), grid())) == [] and len(asked) == 1
    for missing in (None, np.zeros(BINS)):  # no node answered; nobody to calibrate on
        histogram[0] = missing
        with caplog.at_level(logging.WARNING):
            messages = list(strategy.configure_evaluate(2, model, ConfigRecord(), grid()))
        assert [m.content["config"][records.TAU] for m in messages] == [pytest.approx(0.4)] * 2
        assert "round 2 gates with the window's tau 0.4000" in caplog.text
        caplog.clear()


def test_request_budget_reports_realized_rate_of_the_round() -> None:
    strategy = budget(0.1)
    replies = [evaluate_reply(11, np.full(BINS, 1.0), 7, 1), evaluate_reply(12, np.full(BINS, 1.0), 3, 1)]
    metrics = strategy.aggregate_evaluate(3, replies)
    assert metrics[records.REALIZED_RATE] == pytest.approx(10 / 100) and metrics[records.REQUESTS] == 10
    assert strategy.measures_used == {3: "drift"}


def test_request_budget_switches_to_the_signal_that_wins_on_validation() -> None:
    # 100 users, two per bin. The ten a fresh list helps sit in the top bins under "kendall" and in the
    # bottom bins under "drift": only kendall's gate finds them.
    hist = np.full(BINS, 2.0)
    helped = {"drift": np.arange(10), "kendall": np.arange(90, 100)}
    strategy = budget(0.1, measures=("drift", "kendall"))
    reply = evaluate_reply(11, hist, 0, 1, ("drift", "kendall"), helped)
    strategy.aggregate_evaluate(1, [reply])
    assert strategy.measure == "kendall" and strategy.measures_used == {1: "drift"}
    assert strategy.tau == pytest.approx(0.9)
    messages = list(strategy.configure_evaluate(2, ArrayRecord(), ConfigRecord(), grid()))
    assert {m.content["config"][records.MEASURE] for m in messages} == {"kendall"}


def test_request_budget_skips_replies_with_other_bins_and_keeps_tau_without_outcomes() -> None:
    strategy = budget(0.1)
    plain = answer(
        11, RecordDict({"m": MetricRecord({"loss": 0.5, "num-examples": 2})}), MessageType.EVALUATE
    )
    metrics = strategy.aggregate_evaluate(1, [plain])
    assert (
        strategy.tau == 1.0 and metrics["loss"] == pytest.approx(0.5) and records.REALIZED_RATE not in metrics
    )
    other = RequestBudget(FedAvg(min_available_nodes=1), budget=0.1, bins=10, margin_se=1.0)
    assert other.aggregate_evaluate(1, [evaluate_reply(11, np.full(BINS, 1.0), 0, 1)]) is not None
    assert other.tau == 1.0  # 50 bins where 10 were expected: skipped


@pytest.mark.parametrize("bad", [float("nan"), -1.0])
def test_a_reply_of_unsound_sums_is_left_out_not_the_end_of_the_run(
    bad: float, caplog: pytest.LogCaptureFixture
) -> None:
    """One NaN in a node's histogram left the threshold search with nothing to find: an IndexError, every round."""
    key = f"{records.outcome_prefix('test', 'drift')}-bin-count"
    broken = dict(evaluate_reply(12, np.full(BINS, 1.0), 2, 50).content["metrics"])
    broken[key] = [bad, *broken[key][1:]]
    strategy = budget(0.05)
    alone = budget(0.05)
    alone.aggregate_evaluate(1, [evaluate_reply(11, np.full(BINS, 2.0), 0, 100)])
    with caplog.at_level(logging.WARNING):
        metrics = strategy.aggregate_evaluate(
            1,
            [
                evaluate_reply(11, np.full(BINS, 2.0), 0, 100),
                answer(12, RecordDict({"metrics": MetricRecord(broken)}), MessageType.EVALUATE),
            ],
        )
    assert f"node 12 sent {key} not finite and >= 0; left out" in caplog.text
    assert strategy.tau == alone.tau and metrics[records.USERS] == 100


def test_the_final_questions_leave_out_a_reply_of_unsound_sums_as_a_failed_one() -> None:
    """The gate's calibration and the final evaluation sum every node's reply as the rounds' budget does."""
    sums = {"users": 3.0, "bin-count": [0.0, 2.0, 1.0]}
    good = answer(11, RecordDict({records.METRICS: MetricRecord(sums)}), MessageType.EVALUATE)
    broken = {**sums, "bin-count": [0.0, float("inf"), 1.0]}
    bad = answer(12, RecordDict({records.METRICS: MetricRecord(broken)}), MessageType.EVALUATE)
    assert _unusable(good) is None
    assert _unusable(bad) == "node 12 sent bin-count not finite and >= 0"


def test_request_budget_rejects_an_initial_signal_it_does_not_evaluate() -> None:
    with pytest.raises(ValueError, match="initial_measure 'topk' must be one of"):
        RequestBudget(FedAvg(), budget=0.1, measures=("drift",), initial_measure="topk", margin_se=1.0)
    with pytest.raises(ValueError, match="window must be >= 1"):
        RequestBudget(FedAvg(), budget=0.1, window=0, margin_se=1.0)
