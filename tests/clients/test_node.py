"""A node's data: the partition it is told must be one of the fleet's."""

import pytest

from clients.node import load_node
from lsc4rec.config import RunConfig
from lsc4rec.errors import ConfigError


@pytest.mark.parametrize("partition", [-1, 4])
def test_a_partition_outside_the_fleet_is_refused(federation_config: RunConfig, partition: int) -> None:
    """-1 would take the last node's users (counted twice), 4 of 4 nodes an IndexError."""
    with pytest.raises(
        ConfigError, match=rf"partition-id must be in 0\.\.3 for a fleet of 4 nodes, got {partition}"
    ):
        load_node(federation_config.data, federation_config.seed, partition, 4)
    assert len(load_node(federation_config.data, federation_config.seed, 3, 4).users) > 0
