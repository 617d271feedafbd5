"""A Ray-free, in-process Flower grid: the real ServerApp and ClientApp, messages passed by function call.

Flower's Simulation Engine runs each ClientApp behind Ray and a SuperLink (tens of seconds to start); this grid
calls the ClientApp directly with one persistent ``Context`` per node, so tests and quick benchmarks run the
same strategy, messages and handlers in seconds. Node contexts carry ``partition-id`` / ``num-partitions``
exactly as the Simulation Engine sets them; ``node_ids`` can stand in for the random ids it draws on every run.
A ClientApp exception becomes an error reply, as in Flower.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from lsc4rec import records

SERVER_NODE_ID = 1
FIRST_NODE_ID = 1000
RUN_ID = 1  # the one Flower run an in-process grid holds


class InProcessGrid(Grid):
    """Delivers each message to ``client_app`` under the destination node's context, in order."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: Mapping[str, Any],
        node_ids: Sequence[int] | None = None,
    ) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(RUN_ID)
        ids = list(node_ids) if node_ids is not None else [FIRST_NODE_ID + i for i in range(num_nodes)]
        if len(set(ids)) != num_nodes:
            raise ValueError(f"node_ids must be {num_nodes} distinct ids, got {ids!r}.")
        self.contexts = {
            node: Context(
                RUN_ID,
                node,
                {records.PARTITION: i, records.NUM_PARTITIONS: num_nodes},
                RecordDict(),
                dict(run_config),
            )
            for i, node in enumerate(ids)
        }
        self.down: set[int] = set()  # nodes that fail every message (crash tests)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl
        )

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.contexts)  # by id, as a SuperLink might: not necessarily in partition order

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("InProcessGrid answers in send_and_receive; push/pull are not needed.")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("InProcessGrid answers in send_and_receive; push/pull are not needed.")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            try:
                if node in self.down:
                    raise ConnectionError(f"node {node} is down")
                replies.append(self.client_app(message, self.contexts[node]))
            except Exception as exc:  # a crashed ClientApp is an error reply, never a crashed server
                replies.append(
                    Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)
                )
        return replies


def run_in_process(
    server_app: ServerApp,
    client_app: ClientApp,
    num_nodes: int,
    run_config: Mapping[str, Any],
    node_ids: Sequence[int] | None = None,
) -> InProcessGrid:
    """Run ``server_app`` to completion over a fresh in-process grid of ``num_nodes`` nodes; return the grid."""
    grid = InProcessGrid(client_app, num_nodes, run_config, node_ids=node_ids)
    server_app(grid, act_as_server(grid, run_config))
    return grid


def act_as_server(grid: InProcessGrid, run_config: Mapping[str, Any]) -> Context:
    """Make this process the server of ``grid``'s run (messages it creates carry that identity); its context."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, grid.run.run_id, SERVER_NODE_ID
    return Context(grid.run.run_id, SERVER_NODE_ID, {}, RecordDict(), dict(run_config))
