"""The common form every reader returns: raw (user, item, time) triples with the dataset's own ids."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Interactions:
    """Raw interactions as read from a file, before filtering and re-numbering.

    Attributes
    ----------
    users, items:
        Original ids as strings, one entry per interaction.
    times:
        Sort key within a user (a timestamp, or the position in the file for datasets without timestamps).
    titles:
        Original item id -> title, where the dataset has titles (MovieLens); empty otherwise.
    source:
        The file the interactions came from, for messages.
    """

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    source: str
    titles: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)
