"""In-process engine: the checkpoint loaded with transformers, one batched forward pass per request."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from llm_cloud.checkpoint import catalogue_of
from llm_cloud.engines.base import CandidateEngine, Candidates, EngineError, require_finite
from llm_cloud.model import ItemTokenLM


class TransformersEngine(CandidateEngine):
    """Serves ``checkpoint`` on the CPU (or wherever torch runs) with :meth:`ItemTokenLM.top_k`.

    Forward passes are serialised by a lock: concurrent requests would only split the same cores.
    """

    def __init__(self, checkpoint: str | Path) -> None:
        self.lm = ItemTokenLM.from_pretrained(checkpoint)
        self.num_items = self.lm.num_items
        self.model_name = Path(checkpoint).name
        self.catalogue = catalogue_of(checkpoint)
        self._lock = threading.Lock()

    def candidates(
        self, histories: Sequence[Sequence[int]], k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> Candidates:
        try:
            with self._lock:
                lists = self.lm.top_k(histories, k, exclude)
        except Exception as exc:  # the engine's boundary: a damaged checkpoint, out of memory; 503, not 500
            raise EngineError(f"{type(exc).__name__}: {exc}") from exc
        for _, scores in lists:
            require_finite(scores)
        return lists
