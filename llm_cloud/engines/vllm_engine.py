"""vLLM engine: an httpx client of vLLM's OpenAI-compatible server (``/v1/completions``).

Each history becomes a prompt of token ids (the checkpoint's template); vLLM generates one token greedily and
returns the top ``logprobs`` tokens. The server runs with ``--logprobs-mode processed_logprobs``, so those are
log-probabilities after the request's logit processors. Restricting to items:

- ``logit_bias`` of -100 on the few non-item tokens (the scratch vocabulary has four), which leaves the item
  log-probabilities renormalised over items to within e^-100 and costs almost nothing per request;
- ``allowed_token_ids`` listing the item range when the vocabulary has many non-item tokens (a pretrained
  base), which ../shared/ENVIRONMENT.md measured at about a third of the throughput for 10,000 items.

Exclusions are filtered on this side, so ``logprobs`` = K + the longest exclusion set of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from llm_cloud.checkpoint import RETRAIN, catalogue_of, read_json, read_template
from llm_cloud.engines.base import CandidateEngine, Candidates, EngineError, require_finite
from lsc4rec.errors import ConfigError
from lsc4rec.protocol import MAX_HISTORY, MAX_K, bearer_headers

MAX_BIASED_TOKENS = 64  # above this many non-item tokens an allow-list of items is cheaper than a bias table
MAX_LOGPROBS = MAX_K + 2 * MAX_HISTORY  # what the server must allow: K plus a full history and exclusion list
TOKEN_ID_PREFIX = "token_id:"  # keys of top_logprobs with return_tokens_as_token_ids
VLLM_API_KEY_ENV = "VLLM_API_KEY"  # vLLM's own variable: a server started with it set requires the key
# vLLM serves plain http here: what to do when it listens beyond loopback
VLLM_PLAIN_HTTP = (
    "Keep vLLM on the candidate service's host (--host 127.0.0.1) or a private link, "
    "or put a TLS proxy in front"
)


class VLLMEngine(CandidateEngine):
    """Asks the vLLM server at ``url`` for candidate lists.

    The server must serve ``checkpoint`` under the folder's name (``--served-model-name``), as
    :func:`llm_cloud.vllm_server.start_vllm` does. The bearer key is ``api_key``, else ``$VLLM_API_KEY``, the
    variable vLLM itself reads: set it where vLLM runs and where the candidate service runs.
    """

    workers = 16  # requests in flight to vLLM at once: it batches them, and each waits mostly on the network

    def __init__(
        self, checkpoint: str | Path, url: str, timeout_s: float = 60.0, api_key: str | None = None
    ) -> None:
        self.template = read_template(checkpoint)
        self.num_items = self.template.num_items
        self.model_name = Path(checkpoint).name
        self.catalogue = catalogue_of(checkpoint)
        headers = bearer_headers(api_key, VLLM_API_KEY_ENV)
        self._client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers)
        vocab_size = read_json(checkpoint, "config.json").get("vocab_size")
        first, last = self.template.first_item_token, self.template.first_item_token + self.num_items
        if type(vocab_size) is not int or vocab_size < last:
            raise ConfigError(
                "--checkpoint",
                f"{Path(checkpoint, 'config.json')} is damaged (vocab_size {vocab_size!r}, and the items take "
                f"tokens up to {last - 1}). {RETRAIN}",
            )
        others = [t for t in range(vocab_size) if not first <= t < last]
        if len(others) <= MAX_BIASED_TOKENS:
            self._restriction: dict[str, Any] = {"logit_bias": {str(t): -100.0 for t in others}}
        else:
            self._restriction = {"allowed_token_ids": list(range(first, last))}

    def candidates(
        self, histories: Sequence[Sequence[int]], k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> Candidates:
        banned = [
            set(h) | set(exclude[row] if exclude is not None else ()) for row, h in enumerate(histories)
        ]
        choices = self._post(self.completion_body(histories, k, banned))
        if len(choices) != len(histories):
            raise EngineError(f"vLLM returned {len(choices)} choices for {len(histories)} prompts.")
        try:
            return [self._ranked(choice, k, banned[row]) for row, choice in enumerate(choices)]
        # a reply without the logprobs asked for, or with other things in their place
        except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise EngineError(
                f"vLLM's reply lacks the expected logprobs ({type(exc).__name__}: {exc})."
            ) from exc

    def completion_body(self, histories: Sequence[Sequence[int]], k: int, banned: Sequence[set[int]]) -> dict:
        """The ``/v1/completions`` request: one greedy token, enough logprobs to drop ``banned`` and keep K."""
        logprobs = min(k + max(len(b) for b in banned), self.num_items)
        return {
            "model": self.model_name,
            "prompt": [self.template.encode(h) for h in histories],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": logprobs,
            "return_tokens_as_token_ids": True,
            **self._restriction,
        }

    def serving_problem(self) -> str | None:
        """None once the server lists this checkpoint among its models (vLLM's ``GET /v1/models``)."""
        where = f"vLLM at {self._client.base_url}"
        try:
            reply = self._client.get("/v1/models", timeout=5.0)
            reply.raise_for_status()
            served = [model["id"] for model in reply.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            return f"{where} does not answer GET /v1/models ({type(exc).__name__}: {exc})"
        if self.model_name not in served:
            return f"{where} serves {served}, not {self.model_name}"
        return None

    def _post(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            reply = self._client.post("/v1/completions", json=body)
        except httpx.HTTPError as exc:
            raise EngineError(f"vLLM server at {self._client.base_url} unreachable: {exc}") from exc
        if reply.status_code == 401:
            raise EngineError(
                f"vLLM server at {self._client.base_url} wants a key (401): set {VLLM_API_KEY_ENV} where this "
                "service runs to the key vLLM was started with"
            )
        if reply.status_code != 200:
            raise EngineError(f"vLLM server answered {reply.status_code}: {reply.text[:300]}")
        try:
            choices = sorted(reply.json()["choices"], key=lambda c: c["index"])
            indices = [choice["index"] for choice in choices]
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"vLLM server sent a malformed reply: {reply.text[:300]}") from exc
        if indices != list(range(len(choices))):  # one list per prompt, in the prompts' order
            raise EngineError(f"vLLM server answered prompts {indices[:10]}, not 0..{len(choices) - 1}")
        return choices

    def _ranked(self, choice: dict[str, Any], k: int, banned: set[int]) -> tuple[list[int], list[float]]:
        """The top-K items of one choice's logprobs, non-item tokens and ``banned`` items dropped."""
        offset = 1 - self.template.first_item_token  # token id -> item id
        pairs = [
            (int(key[len(TOKEN_ID_PREFIX) :]) + offset, score)
            for key, score in choice["logprobs"]["top_logprobs"][0].items()
        ]
        pairs = [(item, score) for item, score in pairs if 0 < item <= self.num_items and item not in banned]
        require_finite([score for _, score in pairs])
        pairs.sort(key=lambda pair: -pair[1])
        return [item for item, _ in pairs[:k]], [float(score) for _, score in pairs[:k]]

    def close(self) -> None:
        self._client.close()
