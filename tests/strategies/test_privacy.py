"""Tests of FleetPrivacy (Flower's central DP wrapper) around Flower's real FedAvg, on replies built as Flower builds them."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

from strategies.privacy import FleetPrivacy
from tests.strategies.conftest import answer, grid

SIZE = 20_000  # parameters: enough for the noise's spread to be measured to a few percent


def arrays(value: float, first: float | None = None) -> ArrayRecord:
    """One flat array of ``value``, its first entry ``first`` (an update along one axis) when given."""
    w = np.full(SIZE, value, dtype=np.float64)
    if first is not None:
        w[:] = 0.0
        w[0] = first
    return ArrayRecord({"w": Array(w)})


def reply(node: int, record: ArrayRecord, examples: int) -> Message:
    metrics = MetricRecord({"num-examples": examples, "nodes": 1})
    return answer(node, RecordDict({"arrays": record, "metrics": metrics}))


def private(
    noise: float,
    nodes: tuple[int, ...] = (11, 12, 13),
    state: dict | None = None,
    start: ArrayRecord | None = None,
) -> FleetPrivacy:
    """The DP wrapper (C = 1, 10 nodes in the fleet) after round 1's sample of ``nodes``, from ``start``."""
    strategy = FleetPrivacy(
        FedAvg(min_available_nodes=1, min_train_nodes=1, weighted_by_key="nodes"), noise, 1.0, 10, 1e-5, state
    )
    start = arrays(0.0) if start is None else start
    assert len(list(strategy.configure_train(1, start, ConfigRecord(), grid(nodes)))) == len(nodes)
    return strategy


def test_updates_are_clipped_and_averaged_with_equal_weights() -> None:
    strategy = private(noise=1e-9)  # noise far below the tolerance: the mean itself is checked
    replies = [
        reply(11, arrays(0.0, first=0.25), examples=1),  # norm 0.25: kept as is, not scaled up to C
        reply(12, arrays(0.0, first=4.0), examples=100),  # norm 4: clipped to 1
        reply(13, arrays(0.0, first=-0.5), examples=10),
    ]
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert aggregated is not None
    assert aggregated["w"].numpy()[0] == pytest.approx(
        (0.25 + 1.0 - 0.5) / 3, abs=1e-6
    )  # not example-weighted
    assert strategy.releases == 1 and strategy.epsilon > 0


def test_the_update_is_clipped_not_the_weights_and_all_arrays_as_one_vector() -> None:
    """From a model of ones, three updates of +0.5 on one entry stay as they are; an update of 1 on each of two
    arrays has norm sqrt 2 together, so both shrink to 1/sqrt 2 (each alone would be within C = 1)."""
    strategy = private(noise=1e-9, start=arrays(1.0))
    w = np.ones(SIZE)
    w[0] = 1.5
    replies = [reply(n, ArrayRecord({"w": Array(w.copy())}), 1) for n in (11, 12, 13)]
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert aggregated is not None
    np.testing.assert_allclose(aggregated["w"].numpy(), w, atol=1e-6)
    pair = ArrayRecord({"a": Array(np.zeros(4)), "b": Array(np.zeros(4))})
    strategy = private(noise=1e-9, nodes=(11,), start=pair)
    step = np.array([1.0, 0.0, 0.0, 0.0])
    aggregated, _ = strategy.aggregate_train(
        1, [reply(11, ArrayRecord({"a": Array(step), "b": Array(step)}), 1)]
    )
    assert aggregated is not None
    assert [aggregated[key].numpy()[0] for key in ("a", "b")] == pytest.approx([2**-0.5] * 2, abs=1e-6)


def test_every_array_gets_its_noise() -> None:
    pair = ArrayRecord({"a": Array(np.zeros(SIZE)), "b": Array(np.zeros(SIZE))})
    strategy = private(noise=2.0, start=pair)
    aggregated, _ = strategy.aggregate_train(1, [reply(n, pair, 1) for n in (11, 12, 13)])
    assert aggregated is not None
    for key in ("a", "b"):
        assert aggregated[key].numpy().std() == pytest.approx(2.0 / 3, rel=0.05)


def test_noise_has_std_z_c_over_the_rounds_sample_and_epsilon_is_accounted() -> None:
    strategy = private(noise=2.0)
    aggregated, _ = strategy.aggregate_train(1, [reply(n, arrays(0.0), 1) for n in (11, 12, 13)])
    assert aggregated is not None
    assert aggregated["w"].numpy().std() == pytest.approx(2.0 * 1.0 / 3, rel=0.05)
    # round 2: a node has gone offline; the noise and the event follow the 2 sampled, nothing is raised
    assert len(list(strategy.configure_train(2, aggregated, ConfigRecord(), grid((11, 12))))) == 2
    second, _ = strategy.aggregate_train(2, [reply(n, aggregated, 1) for n in (11, 12)])
    assert second is not None
    assert (second["w"].numpy() - aggregated["w"].numpy()).std() == pytest.approx(2.0 / 2, rel=0.05)
    reference = private(noise=2.0).accountant  # a fresh accountant fed the same two releases by hand
    for n in (3, 2):
        reference.compose(GaussianPrivacyEvent(noise_multiplier=2.0, sample_size=n, population_size=10))
    assert strategy.epsilon == pytest.approx(reference.get_privacy_spent().epsilon)
    # the state goes on in a new strategy (a resumed run) with the same ε
    assert private(noise=2.0, state=strategy.state()).epsilon == pytest.approx(strategy.epsilon)


def test_a_round_with_a_failed_node_releases_nothing_and_spends_nothing() -> None:
    """The mean of the two others would be less noisy than accounted for: Flower's strict rule skips the round."""
    strategy = private(noise=1.0)
    failed = answer(13, Error(code=0, reason="node crashed"))
    aggregated, _ = strategy.aggregate_train(
        1, [reply(11, arrays(0.0), 1), reply(12, arrays(0.0), 1), failed]
    )
    assert aggregated is None and strategy.releases == 0 and strategy.epsilon == 0.0


def test_noise_ignores_the_runs_seed() -> None:
    """Noise that the run config's seed reproduces could be subtracted by anyone holding the config."""
    draws = []
    for _ in range(2):
        np.random.seed(0)  # what seed_everything does to numpy's global generator
        aggregated, _ = private(noise=1.0).aggregate_train(
            1, [reply(n, arrays(0.0), 1) for n in (11, 12, 13)]
        )
        assert aggregated is not None
        draws.append(aggregated["w"].numpy())
    assert not np.array_equal(draws[0], draws[1])


def test_a_reply_claiming_more_weight_voids_the_round_without_ending_the_run() -> None:
    strategy = private(noise=1.0)
    claims = reply(13, arrays(0.0), 1)
    claims.content["metrics"]["nodes"] = 5  # would count five times in the mean the noise was sized for
    aggregated, _ = strategy.aggregate_train(
        1, [reply(11, arrays(0.0), 1), reply(12, arrays(0.0), 1), claims]
    )
    assert aggregated is None and strategy.releases == 0
