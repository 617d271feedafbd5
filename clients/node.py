"""What one node (a device with one user, or an edge box with several) holds: its users and their views.

The node reads the prepared dataset locally and keeps only its own users; nothing here leaves the node.
Prefixes for collaborative training follow the federation's privacy rule: the cloud is never sent a history it
has not already seen (:meth:`NodeData.collaborative_prefixes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lsc4rec.config import DataConfig
from lsc4rec.data.batching import windows
from lsc4rec.data.partition import partition_users
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.data.split import Stage, TemporalSplit
from lsc4rec.errors import ConfigError


@dataclass(frozen=True)
class NodeData:
    """The users of one node and the temporal split they live in."""

    split: TemporalSplit
    users: np.ndarray

    @property
    def num_items(self) -> int:
        return self.split.dataset.num_items

    def training_windows(self, max_len: int) -> list[np.ndarray]:
        """Every user's SRM training sequence (x_1 … x_{n-2}), cut into windows of ``max_len + 1``."""
        return [w for u in self.users for w in windows(self.split.srm_train_sequence(u), max_len)]

    def collaborative_prefixes(self, count: int) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        """The newest ``count`` training targets of each user, as (user, example, cloud query) triples.

        The example is x_1 … x_t (its last item is the target). The cloud query is the prefix x_1 … x_{t-1}
        when the cloud has already seen it at validation time; a fresher prefix is paired with the cloud view
        x_1 … x_{n-2-ℓ} instead: the list the device holds at that moment, exactly as at inference.
        """
        users, examples, queries = [], [], []
        for u in self.users:
            train = self.split.srm_train_sequence(u)
            seen = len(self.split.cloud_view(u, "valid"))
            for end in range(len(train), max(1, len(train) - count), -1):
                users.append(int(u))
                examples.append(train[:end])
                queries.append(train[: min(end - 1, seen)])
        return users, examples, queries

    def adaptation_windows(self, stage: Stage, max_len: int) -> list[np.ndarray]:
        """The newest window (``max_len + 1`` items) of each device view at ``stage``: what adaptation sees.

        At test time it ends with x_{n-1}, an interaction the global model never trained on.
        """
        return [self.split.device_view(u, stage)[-(max_len + 1) :] for u in self.users]

    def views(self, stage: Stage) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """Device views, cloud views and targets of the node's users at ``stage``."""
        device, cloud = (self.split.views(stage, side, self.users) for side in ("device", "cloud"))
        return device, cloud, self.split.targets(stage, self.users)


@lru_cache(maxsize=4)
def load_node(data: DataConfig, seed: int, partition: int, partitions: int) -> NodeData:
    """The node's data (cached per process: a simulation reuses it across rounds; deployment reloads it).

    ``partitions == 0`` means one user per node.
    """
    dataset = load_or_prepare(data, seed)
    split = TemporalSplit(dataset, data.lag)
    parts = partition_users(dataset.num_users, partitions, seed)
    if not 0 <= partition < len(parts):  # -1 would take the last node's users: counted twice, silently
        raise ConfigError(
            "--node-config",
            f"partition-id must be in 0..{len(parts) - 1} for a fleet of {len(parts)} nodes, got {partition}. "
            "Start each supernode with --node-config 'partition-id=I num-partitions=N' as the run's fleet has it.",
        )
    return NodeData(split, parts[partition])
