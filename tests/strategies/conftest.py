"""What the strategy tests share: a stand-in for the Grid's node list, and the ServerApp's task identity."""

from collections.abc import Sequence

import pytest
from flwr.supercore.task_identity import TaskIdentity


class FakeGrid:
    """The part of a Grid that FedAvg's node sampling uses: the ids of the connected nodes."""

    def __init__(self, node_ids: Sequence[int] = (11, 12)) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return self.node_ids


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages take run and node ids from the task identity the ServerApp runtime sets."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
