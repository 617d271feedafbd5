"""The one interface every candidate engine implements (the service only talks to this)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

Candidates = list[tuple[list[int], list[float]]]  # per history: (items best first, their scores)


class EngineError(RuntimeError):
    """The engine could not answer (backend down, timed out, malformed reply); the service maps it to 503."""


def require_finite(scores: Sequence[float]) -> None:
    """Refuse a diverged model's scores: NaN does not even sort, and JSON has no NaN to send the device."""
    broken = [score for score in scores if not math.isfinite(score)]
    if broken:
        raise EngineError(f"the model returned non-finite log-probabilities ({broken[:3]}): is it broken?")


class CandidateEngine(ABC):
    """Turns histories into ranked candidate lists; the same checkpoint gives the same lists on every engine.

    Attributes
    ----------
    num_items:
        N: valid item ids are 1..N.
    model_name:
        Name reported in responses (the checkpoint folder's name).
    catalogue:
        The checkpoint's :func:`~lsc4rec.protocol.catalogue_digest`, reported on ``/healthz`` so that devices
        can check the LLM numbers items as their data do (None: not known, nothing to check).
    workers:
        How many requests the service hands the engine at once: one for a model in this process, whose forward
        passes would only split the same cores; more for a server that batches what it is sent.
    """

    num_items: int
    model_name: str
    catalogue: str | None = None
    workers: int = 1

    @abstractmethod
    def candidates(
        self, histories: Sequence[Sequence[int]], k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> Candidates:
        """Per history the ``k`` most likely next items (never one of its history or ``exclude`` items).

        Scores are log-probabilities renormalised over the item tokens. Raises :class:`EngineError`.
        """

    def serving_problem(self) -> str | None:
        """Why the engine cannot answer yet, or None when it can (asked once when the service starts).

        An in-process engine that loaded can always answer; a remote one may still be loading, or serve another
        model, which would otherwise show only as 503s on the first requests.
        """
        return None

    def close(self) -> None:  # noqa: B027 - engines without resources need not override it
        """Release what the engine holds (connections, threads)."""
