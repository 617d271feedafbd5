"""The temporal split of DESIGN.md section 2, as one object.

For a user with items x_1 … x_n (1-based positions) and lag ℓ:

========================  =========================  ==================================================
view                      items                      used for
========================  =========================  ==================================================
SRM training sequence     x_1 … x_{n-2}              device training, targets at positions 2 … n-2
device view, validation   x_1 … x_{n-2}              SRM input for the validation target x_{n-1}
device view, test         x_1 … x_{n-1}              SRM input for the test target x_n
cloud view, validation    x_1 … x_{n-2-ℓ}            what the cloud has seen at validation time
cloud view, test          x_1 … x_{n-1-ℓ}            the stale history the cloud's list is made from
LLM training sequence     x_1 … x_{n-3-ℓ}            LLM targets at positions 2 … n-3-ℓ
LLM validation            x_1 … x_{n-3-ℓ} -> x_{n-2-ℓ}  the LLM's early stopping
========================  =========================  ==================================================

Every view is a prefix of the user's sequence, so the split stores only the dataset and ℓ and slices.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lsc4rec.data.dataset import SequenceDataset
from lsc4rec.errors import ConfigError, DataFormatError

# how each command takes a higher k-core: the commands that read prepared files (llm train, llm evaluate) take
# one that `data prepare` made; those that prepare the data themselves take the setting
KCORE_FIX = (
    "`lsc4rec data prepare --kcore N` for the commands given a prepared file, "
    "`--set data.kcore=N` for the others"
)

Stage = Literal["valid", "test"]


@dataclass(frozen=True)
class TemporalSplit:
    """Views and targets of every user under lag ``lag`` (see the module docstring for the table)."""

    dataset: SequenceDataset
    lag: int = 2

    def __post_init__(self) -> None:
        shortest = int(self.dataset.lengths().min())
        if shortest < 3:
            raise DataFormatError(
                self.dataset.meta.get("name", "the dataset"),
                f"every user needs at least 3 items (a history, the validation and the test target), but the "
                f"shortest sequence has {shortest}. Prepare it with a k-core of 3 or more ({KCORE_FIX}).",
            )
        if self.lag < 0 or shortest - 3 - self.lag < 0:
            raise ConfigError(
                "data.lag",
                f"must be in [0, {shortest - 3}] so that every user's cloud view at "
                f"validation holds an item (shortest sequence: {shortest}), got {self.lag}. "
                f"Lower it, or prepare the data with a higher k-core ({KCORE_FIX}).",
            )

    def check_trainable(self, model: Literal["SRM", "LLM"]) -> None:
        """Refuse data on which ``model`` would have no training target at all (and train on nothing)."""
        # a training sequence of two items (one input, one target): x_1 … x_{n-2} or x_1 … x_{n-3-ℓ}
        need = 4 if model == "SRM" else 5 + self.lag
        longest = int(self.dataset.lengths().max())
        if longest < need:
            lag = f" under lag {self.lag}" if model == "LLM" else ""  # the SRM trains on the device's view
            fix = " or a smaller data.lag" if model == "LLM" else ""
            raise DataFormatError(
                self.dataset.meta.get("name", "the dataset"),
                f"the {model} needs a user with at least {need} items to have a training target{lag}, but the "
                f"longest sequence has {longest}. Use longer sequences{fix}.",
            )

    @property
    def num_users(self) -> int:
        return self.dataset.num_users

    def _prefix(self, user: int, drop: int) -> np.ndarray:
        seq = self.dataset.sequence(user)
        return seq[: len(seq) - drop]

    def srm_train_sequence(self, user: int) -> np.ndarray:
        """x_1 … x_{n-2}: the device's training data (inputs x_1 … x_{n-3}, targets x_2 … x_{n-2})."""
        return self._prefix(user, 2)

    def device_view(self, user: int, stage: Stage) -> np.ndarray:
        """The fresh history on the device when predicting the ``stage`` target."""
        return self._prefix(user, 2 if stage == "valid" else 1)

    def cloud_view(self, user: int, stage: Stage) -> np.ndarray:
        """The stale history the cloud has seen when predicting the ``stage`` target (ℓ items behind)."""
        return self._prefix(user, (2 if stage == "valid" else 1) + self.lag)

    def target(self, user: int, stage: Stage) -> int:
        """x_{n-1} for validation, x_n for test."""
        seq = self.dataset.sequence(user)
        return int(seq[-2] if stage == "valid" else seq[-1])

    def llm_train_sequence(self, user: int) -> np.ndarray:
        """x_1 … x_{n-3-ℓ}: the LLM's training sequence (empty or one item for the shortest users: no target)."""
        return self._prefix(user, 3 + self.lag)

    def llm_valid_target(self, user: int) -> int:
        """x_{n-2-ℓ}: the newest item of the cloud view at validation, held out for the LLM's early stopping."""
        return int(self.cloud_view(user, "valid")[-1])

    def views(
        self, stage: Stage, side: Literal["device", "cloud"], users: Iterable[int] | None = None
    ) -> list[np.ndarray]:
        """The ``side`` view for ``stage`` of each of ``users`` (default: every user)."""
        view = self.device_view if side == "device" else self.cloud_view
        return [view(u, stage) for u in self._each(users)]

    def targets(self, stage: Stage, users: Iterable[int] | None = None) -> np.ndarray:
        """The target of ``stage`` of each of ``users`` (default: every user)."""
        return np.array([self.target(u, stage) for u in self._each(users)], dtype=np.int64)

    def _each(self, users: Iterable[int] | None) -> Iterator[int]:
        """``users`` as ints (numpy ids index sequences alike, but print and hash apart), or every user."""
        return (int(u) for u in (range(self.num_users) if users is None else users))
