"""Early stopping on a validation score: the one rule the SRM's ``fit`` and the LLM's training stop by."""

from __future__ import annotations

import math
import time


class EarlyStopping:
    """The best validation score so far, and whether to stop.

    Stop after ``patience`` evaluations in a row without a gain, or once ``max_minutes`` (> 0) are spent since
    the stopper was made. The caller keeps the weights: :meth:`update` says whether a score is the new best.
    """

    def __init__(self, patience: int, max_minutes: float) -> None:
        self.patience = patience
        self.max_minutes = max_minutes
        self.best = -math.inf
        self.best_epoch = 0
        self.stale = 0  # evaluations since the best
        self.started = time.perf_counter()

    def update(self, score: float, epoch: int) -> bool:
        """Record one evaluation; True when ``score`` beats every earlier one."""
        if score > self.best:
            self.best, self.best_epoch, self.stale = score, epoch, 0
            return True
        self.stale += 1
        return False

    @property
    def seconds(self) -> float:
        """Seconds since the stopper was made (the training's clock)."""
        return time.perf_counter() - self.started

    @property
    def done(self) -> bool:
        """Whether to stop: patience spent, or out of time."""
        return self.stale >= self.patience or (self.max_minutes > 0 and self.seconds > 60 * self.max_minutes)
