"""Partitioning users onto federation nodes: one user per device, or edge boxes of several users."""

from __future__ import annotations

import numpy as np

from lsc4rec.errors import ConfigError


def fleet_size(num_nodes: int, num_users: int) -> int:
    """The number of nodes ``federation.num_nodes`` asks for: 0 is one node per user (devices).

    Checked before anything is trained or started, so a fleet larger than the dataset's users is one clear
    error at the start of a run, not a failure inside every node.
    """
    nodes = num_nodes or num_users
    if not 1 <= nodes <= num_users:
        raise ConfigError(
            "federation.num_nodes",
            f"must be in [1, {num_users}] (one user at least per node; 0 = one node per user), got {num_nodes}.",
        )
    return nodes


def partition_users(num_users: int, num_nodes: int, seed: int = 0) -> list[np.ndarray]:
    """Assign users to ``num_nodes`` nodes by a seeded shuffle and near-equal contiguous chunks.

    ``num_nodes == num_users`` (or 0) gives one user per node (a device); fewer nodes give edge boxes holding
    ``ceil(num_users / num_nodes)`` or one fewer users. Every user lands on exactly one node.
    """
    num_nodes = fleet_size(num_nodes, num_users)
    order = np.random.default_rng(seed).permutation(num_users)
    return [np.sort(chunk) for chunk in np.array_split(order, num_nodes)]
