"""The fleet as the server sees it: connected, its partitions checked, sampled and aggregated alike every run.

The partitions are the ones its nodes were started with (``check_partitions``).

Three things kept a fixed seed from repeating a run in Flower's Simulation Engine:

- the supernodes get new random node ids on every run (flwrlabs/flower#3328), so the positions that Flower's
  sampler draws (``random.sample(grid.get_node_ids(), n)``) hold other nodes. The server asks every node its
  ``partition-id`` at the start (a query message; the ClientApp answers from its node config), and the nodes
  that joined since before each sample and each final question, and lists node ids in partition order, one per
  partition (``PartitionOrderedGrid``);
- Flower's own background threads in the ServerApp process (heartbeat and retry jitter) draw from the global
  ``random`` module at moments that depend on timing, so seeding it does not fix the sampler's draws. The sampler
  gets a generator of its own for the run (``seeded_node_sampling``);
- the replies of a round arrive in whatever order the nodes finish, and FedAvg's float sums depend on that
  order. ``PartitionOrderedGrid`` hands them on in partition order.

In a simulation the server also keeps only a few messages in flight (:func:`receive`): Flower's
in-memory link state makes the ServerApp's process pay for every message in flight once per node every 0.1 s.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from logging import INFO, WARNING
from typing import Any

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import strategy_utils
from flwr.supercore.run import Run
from flwr.superlink.grid import HttpGrid, InMemoryGrid

from lsc4rec import records
from lsc4rec.errors import ConfigError, LSC4RecError

PULL_INTERVAL_S = 0.05  # how often a simulation's replies are pulled (Flower's own grid: 0.1 s)
DEPLOYMENT_PULL_INTERVAL_S = 3.0  # how often a deployment's SuperLink is asked for replies (as Flower's grid)


def wait_for_nodes(grid: Grid, nodes: int, timeout_s: float = 300.0) -> None:
    """Wait until the fleet the config describes is connected; a clear error instead of waiting forever."""
    deadline = time.monotonic() + timeout_s
    while (connected := len(list(grid.get_node_ids()))) < nodes:
        if time.monotonic() > deadline:
            raise LSC4RecError(
                f"federation.num_nodes expects {nodes} nodes (0 means one per user), but only {connected} "
                f"connected after {timeout_s:.0f} s. Start that many supernodes, or set federation.num_nodes to "
                "the boxes you run (a simulation: num-supernodes); a box that never connects says why in its "
                "own log (an unregistered key, a certificate the SuperLink's CA did not sign)."
            )
        time.sleep(1.0)


@contextmanager
def seeded_node_sampling(seed: int, state: list | None = None) -> Iterator[random.Random]:
    """Within the block, Flower's node sampler draws from ``random.Random(seed)``, which nothing else touches.

    ``state`` (from :func:`sampler_state`, kept in a round's checkpoint) restores the generator as it was after
    that round, so that a resumed run samples the nodes the uninterrupted run would have.
    """
    sampler = random.Random(seed)
    if state is not None:
        version, internal, gauss = state
        sampler.setstate((version, tuple(internal), gauss))
    shared = strategy_utils.random
    strategy_utils.random = sampler  # the module's only use of it is .sample
    try:
        yield sampler
    finally:
        strategy_utils.random = shared


def sampler_state(sampler: random.Random) -> list:
    """The node sampler's state as JSON (what ``seeded_node_sampling`` restores)."""
    version, internal, gauss = sampler.getstate()
    return [version, list(internal), gauss]


def in_flight_window() -> int:
    """How many messages a simulation keeps in flight: four per core this process may use (macOS: every core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 4 * cores


def receive(grid: Grid, messages: Iterable[Message], timeout: float | None) -> Iterator[Message]:
    """The replies to ``messages`` as they come; a simulation's grid gets the messages a few at a time.

    Flower's Simulation Engine looks for each node's next message by scanning every stored message, for every
    node, every 0.1 s (``vce_api.add_messages_to_queue``, ``InMemoryLinkState.get_message_ins``). With all 610
    of the default run's messages pushed at once, that scan took about 0.6 of the 2 cores, in the process beside
    the ClientApps' workers. Here at most four messages per core wait or run (a core runs one ClientApp at a
    time), and replies are pulled as they come, so that a worker seldom waits for its next message. ``timeout``
    bounds the whole call, as Flower's: messages not yet sent by then are not sent. A message keeps its place until
    its reply comes; in a simulation every message gets one (a ClientApp that raises replies with an error), but
    a ClientApp that hangs holds its place until the timeout. A deployment's SuperLink, whose nodes work in
    parallel, gets every message at once and is asked for replies every 3 s, as Flower's own grid does, but its
    replies are handed on pull by pull; the in-process grid of the tests answers them all in one call.
    """
    if isinstance(grid, InMemoryGrid):  # pulled again at once after a reply, to keep the workers fed
        window, interval, eager = in_flight_window(), PULL_INTERVAL_S, True
    elif isinstance(grid, HttpGrid):  # each pull asks the SuperLink about every message still out
        window, interval, eager = sys.maxsize, DEPLOYMENT_PULL_INTERVAL_S, False
    else:
        yield from grid.send_and_receive(messages, timeout=timeout)
        return
    waiting, in_flight = list(messages), set()
    deadline = None if timeout is None else time.monotonic() + timeout
    while (waiting or in_flight) and (deadline is None or time.monotonic() < deadline):
        room = window - len(in_flight)
        if room > 0 and waiting:
            in_flight.update(grid.push_messages(waiting[:room]))
            del waiting[:room]
        answered = list(grid.pull_messages(in_flight))
        in_flight.difference_update(reply.metadata.reply_to_message_id for reply in answered)
        yield from answered
        if (waiting or in_flight) and not (answered and eager):
            time.sleep(interval)


def partition_ids(
    grid: Grid, node_ids: list[int], nodes: int, num_users: int, timeout_s: float = 600.0
) -> dict[int, int]:
    """Ask ``node_ids`` (the connected nodes) their partition: {node id: partition id}; nodes that fail are left out.

    The partitions are checked against the fleet of ``nodes`` nodes (``check_partitions``): supernodes started
    by hand with the wrong ``--node-config`` would otherwise hold overlapping users and be counted twice.
    """
    told, errors = _told_partitions(
        grid,
        node_ids,
        timeout_s,
        "nodes",
        "they are listed after the others, by node id, so node sampling may differ between runs",
    )
    unconfigured = sorted(node for node, reason in errors.items() if records.NODE_CONFIG_OPTION in reason)
    if unconfigured:  # such a box would fail every round it is sampled in
        raise ConfigError(
            records.NODE_CONFIG_OPTION,
            f"{len(unconfigured)} supernode(s) (node ids {', '.join(map(str, unconfigured[:5]))}) were started "
            f'without a whole one: start each box with --node-config "{records.PARTITION}=I '
            f'{records.NUM_PARTITIONS}={nodes}" (I = 0 … {nodes - 1}, one per box)',
        )
    return check_partitions(told, nodes, num_users)


def _told_partitions(
    grid: Grid, node_ids: list[int], timeout_s: float, who: str, untold: str
) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    """Ask ``node_ids`` their node config: {node: (partition id, num-partitions)}, and {node: why it failed}.

    Logs how many of ``who`` told it, and warns of the rest, what that means for them (``untold``).
    """
    messages = [
        Message(
            RecordDict({records.CONFIG: ConfigRecord()}), dst_node_id=node, message_type=MessageType.QUERY
        )
        for node in node_ids
    ]
    told, errors = {}, {}
    for reply in receive(grid, messages, timeout_s):
        if reply.has_error():
            errors[reply.metadata.src_node_id] = reply.error.reason
            continue
        metrics = reply.content[records.METRICS]
        told[reply.metadata.src_node_id] = (
            int(metrics[records.PARTITION]),
            int(metrics[records.NUM_PARTITIONS]),
        )
    log(INFO, "fleet: %d of %d %s told their partition id", len(told), len(node_ids), who)
    if len(told) < len(node_ids):
        log(
            WARNING,
            "%d of %d %s did not tell their partition id (the first: %s); %s",
            len(node_ids) - len(told),
            len(node_ids),
            who,
            next(iter(errors.values()), "no reply before the timeout"),
            untold,
        )
    return told, errors


def check_partitions(told: dict[int, tuple[int, int]], nodes: int, num_users: int) -> dict[int, int]:
    """{node id: partition id} from {node id: (partition id, num-partitions)}, or a ``ConfigError``.

    Each node must have been told the run's fleet size (``num-partitions`` 0 counts as one user per node) and
    a partition id of its own in ``0 … nodes - 1``.
    """
    fix = (
        f'Start supernode i with --node-config "partition-id=i num-partitions={nodes}", i = 0 … {nodes - 1}.'
    )
    owner: dict[int, int] = {}
    for node, (partition, count) in sorted(told.items()):
        if (problem := _partition_problem(node, partition, count, nodes, num_users)) is not None:
            raise ConfigError("--node-config", f"{problem}. {fix}")
        if partition in owner:
            raise ConfigError(
                "--node-config",
                f"partition-id must differ between nodes, got {partition} on nodes {owner[partition]} and "
                f"{node}: their users would be counted twice. {fix}",
            )
        owner[partition] = node
    return {node: partition for node, (partition, _) in told.items()}


def _partition_problem(node: int, partition: int, count: int, nodes: int, num_users: int) -> str | None:
    """What is wrong with ``node``'s node config in a fleet of ``nodes`` nodes, or None."""
    if (count or num_users) != nodes:
        return (
            f"num-partitions must be the run's fleet size, federation.num_nodes = {nodes}, got {count} on "
            f"node {node}: its users would not be the ones the server counts on"
        )
    if not 0 <= partition < nodes:
        return f"partition-id must be in [0, {nodes - 1}], got {partition} on node {node}"
    return None


class PartitionOrderedGrid(Grid):
    """``grid`` with node ids and replies in partition order (unknown nodes last, by id); the rest delegated.

    One node is listed per partition: a box that reconnected under a new id while the SuperLink still lists its
    old one (until that misses its heartbeats) holds the same users, who must be sampled, aggregated and counted
    once, and its newest id is the one that answers. A node that joined during the run with a node config that
    does not fit the fleet (``misfits``) is not listed either.
    """

    def __init__(self, grid: Grid, partitions: dict[int, int], nodes: int, num_users: int) -> None:
        self.grid = grid
        # in the order learned, a partition's newest node last; within one learning by node id (each of them
        # answered just then, so any one stands for the box)
        self.partitions = partitions
        self.nodes, self.num_users = nodes, num_users  # the fleet the partitions are checked against
        self.asked = set(partitions)  # the nodes asked their partition, answered or not
        self.misfits: set[int] = set()
        self.replaced: set[int] = set()  # nodes whose partition a newer node tells (warned of once)

    @classmethod
    def discover(cls, grid: Grid, nodes: int, num_users: int) -> PartitionOrderedGrid:
        """Ask the connected nodes their partitions, check them, and order ``grid`` by them."""
        connected = list(grid.get_node_ids())
        ordered = cls(grid, partition_ids(grid, connected, nodes, num_users), nodes, num_users)
        ordered.asked.update(connected)  # those that did not answer too: asked once
        return ordered

    def learn_new_nodes(self, timeout_s: float = 600.0) -> None:
        """Ask the nodes never asked before their partitions (a box that reconnected has a new id).

        Called before each sample of a round and before the final questions. Each node is asked once, so that one
        that never answers costs the timeout once (and is then listed as a box of its own). A node whose config
        does not fit the fleet is warned of and left out from then on (its users are not the ones the server
        counts on): the run is under way, and its report is worth more than stopping on one box.
        """
        new = [node for node in self.get_node_ids() if node not in self.asked]
        if not new:
            return
        self.asked.update(new)
        told, _ = _told_partitions(
            self.grid,
            new,
            timeout_s,
            "nodes that joined during the run",
            "they are listed after the others, each as a box of its own",
        )
        for node, (partition, count) in sorted(told.items()):
            if (
                problem := _partition_problem(node, partition, count, self.nodes, self.num_users)
            ) is not None:
                log(WARNING, "a node that joined during the run is left out: %s", problem)
                self.misfits.add(node)
            else:
                self.partitions[node] = partition

    def get_node_ids(self) -> Iterable[int]:
        """The listed nodes in partition order, less misfits and nodes whose partition a newer node tells."""
        listed = [node for node in self.grid.get_node_ids() if node not in self.misfits]
        here = set(listed)
        newest = {self.partitions[node]: node for node in self.partitions if node in here}
        replaced = [n for n in listed if n in self.partitions and newest[self.partitions[n]] != n]
        for node in sorted(set(replaced) - self.replaced):
            partition = self.partitions[node]
            log(
                WARNING,
                "node %d is left out: node %d joined later with its partition (%d), as a box that reconnected does",
                node,
                newest[partition],
                partition,
            )
        self.replaced.update(replaced)
        return sorted((n for n in listed if n not in replaced), key=self._position)

    @property
    def run(self) -> Run:
        return self.grid.run

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """The replies in partition order, whatever order they arrived in: float sums (FedAvg) then repeat."""
        return list(self.ordered_replies(messages, timeout))

    def ordered_replies(
        self,
        messages: Iterable[Message],
        timeout: float | None,
        arrived: Callable[[int], None] | None = None,
    ) -> Iterator[Message]:
        """The replies to ``messages`` (one per node) in partition order, each as soon as those before it are in.

        A fold over them (the final evaluation's sums) then holds only the replies that came before their turn:
        in a simulation, whose replies come about in the order the messages went, a few; in a deployment, whose
        nodes answer in any order, up to all of them. A node that does not answer holds back the replies after it
        until the timeout. ``arrived`` is told how many replies have come, as each comes (the progress log).
        """
        messages = list(messages)
        turns = sorted((message.metadata.dst_node_id for message in messages), key=self._position)
        early: dict[int, list[Message]] = {}
        turn = 0
        for count, reply in enumerate(receive(self.grid, messages, timeout), 1):
            if arrived is not None:
                arrived(count)
            early.setdefault(reply.metadata.src_node_id, []).append(reply)
            while turn < len(turns) and turns[turn] in early:
                ready = early.pop(turns[turn])
                yield from ready
                turn += len(ready)  # a node sent two messages is listed twice, side by side
        for node in sorted(early, key=self._position):  # those held back by a node that did not answer
            yield from early[node]

    def _position(self, node: int) -> tuple[int, int, int]:
        """Sort key of ``node``: its partition id, with unknown nodes after every known one, by node id."""
        return (0, self.partitions[node], node) if node in self.partitions else (1, 0, node)
