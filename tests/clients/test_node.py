"""A node's data: the partition it is told must be one of the fleet's."""

import numpy as np
import pytest

from clients.node import NodeData, load_node
from lsc4rec.config import RunConfig
from lsc4rec.data import TemporalSplit
from lsc4rec.errors import ConfigError
from tests.conftest import synthetic_dataset


@pytest.mark.parametrize("partition", [-1, 4])
def test_a_partition_outside_the_fleet_is_refused(federation_config: RunConfig, partition: int) -> None:
    """-1 would take the last node's users (counted twice), 4 of 4 nodes an IndexError."""
    with pytest.raises(
        ConfigError, match=rf"partition-id must be in 0\.\.3 for a fleet of 4 nodes, got {partition}"
    ):
        load_node(federation_config.data, federation_config.seed, partition, 4)
    assert len(load_node(federation_config.data, federation_config.seed, 3, 4).users) > 0


@pytest.mark.parametrize("lag", [0, 1, 2, 3])
def test_training_asks_the_cloud_only_for_what_it_has_seen(lag: int) -> None:
    """The privacy rule of collaborative training: a query is the example's input while the cloud has seen it,
    else the cloud view at validation (the list the device holds then), never a fresher prefix."""
    split = TemporalSplit(synthetic_dataset(), lag)
    node = NodeData(split, np.arange(split.num_users))
    users, examples, queries = node.collaborative_prefixes(5)
    assert len(queries) > split.num_users  # several prefixes per user, some fresher than the cloud's view
    fresher = 0
    for user, example, query in zip(users, examples, queries, strict=True):
        seen = split.cloud_view(user, "valid")
        assert len(query) == min(len(example) - 1, len(seen)) > 0
        assert np.array_equal(query, seen[: len(query)])  # a prefix the cloud holds
        fresher += len(example) - 1 > len(seen)
    # the rule's second half exercised: at lag 0 and 1 every training input x_1 … x_{n-3} is one the cloud has seen
    assert (fresher > 0) is (lag >= 2)
    _, examples, queries = node.collaborative_prefixes(100)  # every target back to the first, x_2
    assert min(len(e) for e in examples) == 2 and min(len(q) for q in queries) == 1  # no empty history asked


def test_adaptation_sees_the_newest_window_of_each_device_view() -> None:
    split = TemporalSplit(synthetic_dataset(), 1)
    node = NodeData(split, np.arange(split.num_users))
    for user, window in zip(node.users, node.adaptation_windows("test", 4), strict=True):
        assert np.array_equal(window, split.device_view(user, "test")[-5:])
