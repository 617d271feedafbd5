"""The server's check of the partitions the nodes were started with (supernodes started by hand)."""

import pytest

from lsc4rec.errors import ConfigError
from server.fleet import check_partitions


def test_partitions_of_a_well_started_fleet_map_nodes_to_ids() -> None:
    told = {70: (1, 3), 50: (0, 3), 90: (2, 3)}
    assert check_partitions(told, nodes=3, num_users=30) == {70: 1, 50: 0, 90: 2}
    assert check_partitions({5: (0, 0), 6: (1, 0)}, nodes=2, num_users=2) == {5: 0, 6: 1}  # 0: one user each


@pytest.mark.parametrize(
    ("told", "message"),
    [
        ({1: (0, 3), 2: (1, 4), 3: (2, 3)}, "num-partitions must be the run's fleet size.*got 4 on node 2"),
        ({1: (0, 0), 2: (1, 0), 3: (2, 0)}, "num-partitions must be the run's fleet size.*got 0 on node 1"),
        ({1: (0, 3), 2: (3, 3), 3: (2, 3)}, r"partition-id must be in \[0, 2\], got 3 on node 2"),
        ({1: (0, 3), 2: (1, 3), 3: (1, 3)}, "partition-id must differ between nodes, got 1 on nodes 2 and 3"),
    ],
)
def test_wrongly_started_supernodes_are_named_with_the_fix(told: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        check_partitions(told, nodes=3, num_users=30)
    assert str(error.value).startswith("--node-config: ")
    assert 'Start supernode i with --node-config "partition-id=i num-partitions=3"' in str(error.value)
