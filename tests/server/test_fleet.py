"""The server's check of the partitions the nodes were started with (supernodes started by hand)."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from uuid import uuid4

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
from flwr.serverapp.strategy import strategy_utils
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.federation.noop_federation_manager import NOOP_FEDERATION_ID
from flwr.superlink.grid import HttpGrid, InMemoryGrid

from lsc4rec.errors import ConfigError, LSC4RecError
from server.app import PROGRESS_NODES, _ask_fleet
from server.fleet import (
    DEPLOYMENT_PULL_INTERVAL_S,
    PartitionOrderedGrid,
    check_partitions,
    in_flight_window,
    receive,
    seeded_node_sampling,
    wait_for_nodes,
)


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


class ListedNodes:
    """A grid's node list, all ``PartitionOrderedGrid.get_node_ids`` reads."""

    def get_node_ids(self) -> list[int]:
        return [5, 21, 20, 7]


def test_nodes_that_never_told_their_partition_are_listed_after_every_known_one() -> None:
    """The node of partition 1 did not answer at the start: its partition's place is no slot for unknown ones."""
    grid = PartitionOrderedGrid(ListedNodes(), {20: 0, 21: 2}, nodes=3, num_users=30)
    assert list(grid.get_node_ids()) == [20, 21, 5, 7]


def test_of_the_nodes_of_one_partition_only_the_newest_is_listed(caplog: pytest.LogCaptureFixture) -> None:
    """20 told partition 0 at the start, 5 later (a box that reconnected, its old id still listed): 5 stands
    for the box, whatever the ids' order, and the left-out node is warned of once."""
    twins = PartitionOrderedGrid(ListedNodes(), {20: 0, 21: 2, 5: 0}, nodes=3, num_users=30)
    assert list(twins.get_node_ids()) == [5, 21, 7] == list(twins.get_node_ids())
    assert caplog.text.count("node 20 is left out: node 5 joined later with its partition (0)") == 1
    gone = PartitionOrderedGrid(ListedNodes(), {20: 0, 21: 2, 99: 0}, nodes=3, num_users=30)
    assert list(gone.get_node_ids()) == [20, 21, 5, 7]  # the newer one is not listed: the older stands


@contextmanager
def as_the_server(run_id: int) -> Iterator[None]:
    """Within the block, the messages this process makes carry the ServerApp's identity, as in Flower's."""
    before = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 11, run_id, 1
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = before


class SimulatedFleet:
    """Flower's own in-memory link state and grid (what ``flwr run`` gives a simulation's ServerApp), with a thread
    answering each node's messages as the Simulation Engine's workers do, except the nodes in ``silent``."""

    def __init__(self, nodes: int, silent: int = 0) -> None:
        factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
        self.nodes = list(_register_nodes(nodes, factory))
        self.state = factory.state()
        run = dataclasses.replace(Run.create_empty(7), primary_task_id=11, federation_id=NOOP_FEDERATION_ID)
        self.state.run_ids[run.run_id] = RunRecord(run=run)
        self.state.task_store[11] = Task(task_id=11, run_id=run.run_id)
        self.grid = InMemoryGrid(state_factory=factory)
        self.grid.set_run(run)
        self._server = as_the_server(run.run_id)
        self.silent = set(self.nodes[:silent])
        self.most_in_flight = 0
        self.answered = 0  # replies stored so far
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._answer, daemon=True)

    def __enter__(self) -> SimulatedFleet:
        self._server.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._server.__exit__(*exc)

    def ordered(self, partitions: dict[int, int] | None = None) -> PartitionOrderedGrid:
        """The grid in the order of ``partitions`` (by default the nodes' own order), as the server has it."""
        partitions = partitions or {node: i for i, node in enumerate(self.nodes)}
        return PartitionOrderedGrid(self.grid, partitions, len(self.nodes), len(self.nodes))

    def messages(self) -> list[Message]:
        return [
            Message(RecordDict({"c": ConfigRecord()}), dst_node_id=node, message_type=MessageType.QUERY)
            for node in self.nodes
        ]

    def _answer(self) -> None:
        while not self._stop.is_set():
            self.most_in_flight = max(self.most_in_flight, len(self.state.message_ins_store))
            for node in self.nodes:
                for message in self.state.get_message_ins(node_id=node, limit=1):
                    if node in self.silent:
                        continue
                    reply = Message(RecordDict({"c": ConfigRecord({"node": node})}), reply_to=message)
                    reply.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's engine does
                    self.state.store_message_res(reply)
                    self.answered += 1
            time.sleep(0.005)


def test_a_simulation_gets_every_reply_with_few_messages_in_flight() -> None:
    """Flower's engine scans every stored message for each node every 0.1 s: the server keeps few stored."""
    window = in_flight_window()
    with SimulatedFleet(nodes=3 * window) as fleet:
        replies = list(receive(fleet.grid, fleet.messages(), timeout=60))
    assert sorted(r.content["c"]["node"] for r in replies) == sorted(fleet.nodes)
    assert 0 < fleet.most_in_flight <= window


def test_a_simulations_replies_are_handed_on_in_partition_order_before_all_are_in() -> None:
    """The final questions fold the replies as they come (``ordered_replies``), holding a few, not the fleet's."""
    window = in_flight_window()
    with SimulatedFleet(nodes=4 * window) as fleet:
        # partitions in the reverse of node order: each pull brings a window's replies in the wrong order
        partitions = {node: len(fleet.nodes) - 1 - i for i, node in enumerate(fleet.nodes)}
        grid = fleet.ordered(partitions)
        by_node = {message.metadata.dst_node_id: message for message in fleet.messages()}
        handed, answered_by_then = [], []
        for reply in grid.ordered_replies([by_node[n] for n in grid.get_node_ids()], timeout=60):
            handed.append(partitions[reply.metadata.src_node_id])
            answered_by_then.append(fleet.answered)
    assert handed == list(range(len(fleet.nodes)))
    assert answered_by_then[0] <= 2 * window < len(fleet.nodes)


def test_replies_come_in_partition_order_whatever_order_the_messages_went_in() -> None:
    with SimulatedFleet(nodes=4) as fleet:
        partitions = {node: len(fleet.nodes) - 1 - i for i, node in enumerate(fleet.nodes)}
        grid = fleet.ordered(partitions)
        replies = grid.ordered_replies(fleet.messages(), timeout=60)  # sent in node order: partitions 3 to 0
        assert [partitions[reply.metadata.src_node_id] for reply in replies] == [0, 1, 2, 3]


def test_the_node_sampler_draws_from_the_runs_seed() -> None:
    with seeded_node_sampling(5):
        drawn = strategy_utils.random.sample(range(100), 10)
    assert drawn == random.Random(5).sample(range(100), 10)


def test_replies_held_back_by_a_node_that_never_answers_are_handed_on_at_the_timeout() -> None:
    with SimulatedFleet(nodes=in_flight_window() + 3, silent=1) as fleet:
        grid = fleet.ordered()  # the silent node's turn is the first
        replies = list(grid.ordered_replies(fleet.messages(), timeout=2.0))
    assert [grid.partitions[r.metadata.src_node_id] for r in replies] == list(range(1, len(fleet.nodes)))


def test_a_simulation_node_that_never_answers_costs_the_timeout_not_the_other_replies() -> None:
    window = in_flight_window()
    with SimulatedFleet(nodes=window + 3, silent=1) as fleet:
        started = time.monotonic()
        replies = list(receive(fleet.grid, fleet.messages(), timeout=2.0))
    assert 2.0 <= time.monotonic() - started < 10.0
    assert sorted(r.content["c"]["node"] for r in replies) == sorted(fleet.nodes[1:])


def test_a_fleet_short_of_nodes_names_the_setting_and_where_a_missing_box_says_why() -> None:
    with SimulatedFleet(3) as fleet:
        wait_for_nodes(fleet.grid, 3, timeout_s=0.5)  # all there: no wait
        with pytest.raises(LSC4RecError, match=r"expects 4 nodes .* only 3 connected after 1 s") as error:
            wait_for_nodes(fleet.grid, 4, timeout_s=1.0)
    assert "set federation.num_nodes to the boxes you run" in str(error.value)
    assert "says why in its own log" in str(error.value)


@pytest.mark.parametrize("nodes", [PROGRESS_NODES, 25])
def test_the_final_questions_log_every_tenth_of_the_replies(
    nodes: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A final question to the default run's 610 nodes takes most of a minute: the log shows it advancing."""
    caplog.set_level(logging.INFO, logger="flwr")
    with SimulatedFleet(nodes=nodes) as fleet:
        content = RecordDict({"c": ConfigRecord()})
        replies = list(_ask_fleet(fleet.ordered(), content, MessageType.QUERY, nodes, "final evaluation"))
    assert len(replies) == nodes
    tenths = [-(-k * nodes // 10) for k in range(1, 10)]  # the first count at or past each tenth
    assert [r.getMessage() for r in caplog.records if "nodes answered" in r.getMessage()] == [
        f"final evaluation: {n} of {nodes} nodes answered" for n in tenths
    ]


class RecordedSuperLink(HttpGrid):
    """A deployment's grid (Flower's ``HttpGrid``) answering from memory, two replies per pull, newest first."""

    def __init__(self) -> None:  # no SuperLink to connect to
        self.pending: list[Message] = []
        self.pulls = 0

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())  # as the SuperLink does
            self.pending.append(message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        self.pulls += 1
        ready, self.pending = self.pending[-2:][::-1], self.pending[:-2]
        return [Message(RecordDict(), reply_to=message) for message in ready]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        raise AssertionError("Flower's send_and_receive hands on the replies only when all are in")


def test_a_deployments_replies_are_counted_as_they_come_and_handed_on_in_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every message is pushed at once, the SuperLink asked every 3 s, as Flower's grid does."""
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    with as_the_server(7):
        superlink = RecordedSuperLink()
        nodes = list(range(10, 20))
        grid = PartitionOrderedGrid(
            superlink, {node: i for i, node in enumerate(nodes)}, len(nodes), len(nodes)
        )
        messages = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
        arrivals: list[int] = []
        handed = [
            (reply.metadata.src_node_id, list(arrivals))
            for reply in grid.ordered_replies(messages, 60, arrivals.append)
        ]
    assert [node for node, _ in handed] == nodes  # in partition order, the first to come last
    assert handed[0][1] == list(range(1, 11))  # every reply counted as it came, before its turn
    assert superlink.pulls == 5 and sleeps == [DEPLOYMENT_PULL_INTERVAL_S] * 4  # none after the last
