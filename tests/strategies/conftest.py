"""What the strategy tests share: the real in-process grid's node list, replies, and the server's identity."""

from collections.abc import Sequence

import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.app import app as client_app
from server.inprocess import InProcessGrid


def grid(node_ids: Sequence[int] = (11, 12)) -> InProcessGrid:
    """The project's in-process grid over ``node_ids`` (nothing runs until a message is sent)."""
    return InProcessGrid(client_app, len(node_ids), {}, node_ids=list(node_ids))


def answer(node: int, content: RecordDict | Error, message_type: str = MessageType.TRAIN) -> Message:
    """Node ``node``'s reply holding ``content`` to an instruction of ``message_type``, as Flower pairs them."""
    instruction = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=node, message_type=message_type)
    return Message(content, reply_to=instruction)


@pytest.fixture(autouse=True)
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Instruction messages take run and node ids from the task identity the ServerApp runtime sets."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
