"""The run config picks Flower's strategy: FedAvgM's server momentum really carries over between rounds."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM

from lsc4rec.config import RunConfig
from lsc4rec.errors import ConfigError
from server.app import _guarded, flower_strategy
from tests.strategies.conftest import answer, grid


def weights(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.full(3, value, dtype=np.float32))})


def replies(values: list[float]) -> list[Message]:
    """Train replies from nodes 11, 12, ... holding ``values``, ten examples each."""
    return [
        answer(node, RecordDict({"arrays": weights(value), "metrics": MetricRecord({"num-examples": 10})}))
        for node, value in enumerate(values, start=11)
    ]


def one_round(strategy, server_round: int, start: ArrayRecord, values: list[float]) -> float:
    list(strategy.configure_train(server_round, start, ConfigRecord(), grid()))
    aggregated, _ = strategy.aggregate_train(server_round, replies(values))
    return float(aggregated["w"].numpy()[0])


def test_fedavgm_applies_server_momentum_to_the_averaged_update() -> None:
    cfg = RunConfig().override(["federation.strategy=fedavgm", "federation.server_momentum=0.5"])
    strategy = flower_strategy(cfg)
    assert isinstance(strategy, FedAvgM) and strategy.server_learning_rate == 1.0
    # round 1: the nodes move 0 -> mean(1, 3) = 2, so the pseudo-gradient is -2 and the step lands on 2
    assert one_round(strategy, 1, weights(0.0), [1.0, 3.0]) == pytest.approx(2.0)
    # round 2: the nodes move 2 -> 3 (pseudo-gradient -1); momentum adds 0.5 * -2, so the step is 2, not 1
    assert one_round(strategy, 2, weights(2.0), [2.0, 4.0]) == pytest.approx(4.0)


def test_fedadam_trains_past_its_first_round() -> None:
    """FedAdam's aggregate comes back float64, the devices' updates float32: the guard must keep taking them."""
    cfg = RunConfig().override(["federation.strategy=fedadam"])
    strategy = _guarded(flower_strategy(cfg), cfg.federation)  # as the ServerApp wraps it
    list(strategy.configure_train(1, weights(0.0), ConfigRecord(), grid()))
    after_one, _ = strategy.aggregate_train(1, replies([1.0, 3.0]))
    list(strategy.configure_train(2, after_one, ConfigRecord(), grid()))
    after_two, metrics = strategy.aggregate_train(2, replies([1.0, 3.0]))
    assert metrics["rejected-malformed"] == 0
    assert float(after_two["w"].numpy()[0]) > float(after_one["w"].numpy()[0]) > 0.0


def test_strategy_defaults_and_explicit_server_lr() -> None:
    assert type(flower_strategy(RunConfig())) is FedAvg
    fedadam = flower_strategy(RunConfig().override(["federation.strategy=fedadam"]))
    assert isinstance(fedadam, FedAdam) and fedadam.eta == 0.01
    explicit = RunConfig().override(["federation.strategy=fedavgm", "federation.server_lr=0.5"])
    assert flower_strategy(explicit).server_learning_rate == 0.5


@pytest.mark.parametrize(
    ("setting", "rule"),
    [
        ("federation.strategy=fedsgd", r"federation\.strategy: must be fedavg\|fedprox\|fedadam\|fedavgm"),
        ("federation.server_momentum=1.0", r"federation\.server_momentum: must be in \[0, 1\)"),
        ("federation.server_momentum=-0.1", r"federation\.server_momentum: must be in \[0, 1\)"),
        ("federation.server_lr=-1", r"federation\.server_lr: must be >= 0"),
    ],
)
def test_bad_strategy_settings_name_the_field_and_the_rule(setting: str, rule: str) -> None:
    """With FedAvgM, which reads them all, so that the rule itself is what refuses (not "used only by")."""
    with pytest.raises(ConfigError, match=rule):
        RunConfig().override(["federation.strategy=fedavgm", setting])
