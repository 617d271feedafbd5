"""The device's side of the candidate service: an HTTP client with timeouts, retries, a cache and fallbacks.

The device never imports the cloud's code: it speaks only the wire schema of ``lsc4rec.protocol``. Lists are
cached per (user, prefix length): a list made from a prefix never changes while the cloud's model is the same,
so each is asked for once per node and kept in Flower's node state between rounds. When the service cannot be
reached the device keeps going: a missing list is reported as a fallback and the caller decides (serve the
cached stale list instead of a fresh one; rank with the SRM alone; train without hard negatives). A process
that found the service down skips it for a cooldown (:class:`Outages`): nodes come and go by the hundred, and
each paying the whole retry budget against a service that hangs would stretch a round past the server's patience.
"""

from __future__ import annotations

import json
import logging
import math
import os
import ssl
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httpx
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from pydantic import ValidationError

from lsc4rec.credentials import client_context
from lsc4rec.errors import CloudUnavailableError, ProtocolError
from lsc4rec.protocol import (
    API_KEY_ENV,
    MAX_BATCH,
    MAX_HISTORY,
    MAX_REPLY_BYTES,
    SERVICE_CA_ENV,
    CandidateRequest,
    CandidateResponse,
    bearer_headers,
)

log = logging.getLogger(__name__)
TRANSIENT_4XX = {408, 429}  # a proxy's request timeout, a rate limit: retried like a 5xx


class Outages:
    """When each candidate service failed in this process, so that its clients skip it for a cooldown.

    One record per service URL, shared by every node the process runs (a simulation worker runs many, round
    after round). A client of a service that failed less than ``cooldown_s`` ago does not try it and falls back
    at once; after the cooldown its first attempt is a single probe, without retries, and a success forgets the
    outage. Without this, a service that hangs would cost every fetch of every node ``(retries + 1) *
    timeout_s``: hours for the default run's final evaluation. In deployment Flower starts a ClientApp process
    per message, so the node carries the record from one message to the next in its state (:meth:`to_record`,
    :meth:`restore`), in wall-clock time.
    """

    def __init__(self) -> None:
        self._failed: dict[str, tuple[float, float]] = {}  # url -> (monotonic time of failure, cooldown_s)
        self._answered: dict[str, float] = {}  # url -> monotonic time of its last answer here
        self._lock = threading.Lock()

    def skip_until(self, url: str) -> float | None:
        """The monotonic time until which ``url`` is skipped; None unless it failed here since it last answered."""
        with self._lock:
            failed = self._failed.get(url)
        return None if failed is None else failed[0] + failed[1]

    def failed(self, url: str, cooldown_s: float) -> None:
        with self._lock:
            self._failed[url] = (time.monotonic(), cooldown_s)

    def answered(self, url: str) -> None:
        with self._lock:
            self._failed.pop(url, None)
            self._answered[url] = time.monotonic()

    def to_record(self) -> ConfigRecord:
        """The outages as ``{url: [wall-clock time of failure, cooldown_s]}``, for a node's state."""
        offset = time.time() - time.monotonic()
        with self._lock:
            return ConfigRecord(
                {url: [at + offset, float(cooldown)] for url, (at, cooldown) in self._failed.items()}
            )

    def restore(self, record: ConfigRecord | None) -> None:
        """Take on the outages a node's state kept (:meth:`to_record`), but none older than an answer seen here.

        A failure dated in the future (the clock was set back since) counts as failing now.
        """
        now, offset = time.monotonic(), time.time() - time.monotonic()
        with self._lock:
            for url, (wall, cooldown) in (record or {}).items():
                at = min(float(wall) - offset, now)
                if at > max(self._failed.get(url, (-math.inf,))[0], self._answered.get(url, -math.inf)):
                    self._failed[url] = (at, float(cooldown))

    def clear(self) -> None:
        """Forget every outage and answer: the tests start each from a clean slate, as a new process does."""
        with self._lock:
            self._failed.clear()
            self._answered.clear()


OUTAGES = Outages()


def _retry_after(status: int, headers: httpx.Headers) -> float | None:
    """The seconds a 503 asks the client to wait (``Retry-After``): a service that is up but full, not down."""
    value = headers.get("retry-after", "")
    return float(value) if status == HTTPStatus.SERVICE_UNAVAILABLE and value.isdigit() else None


@dataclass
class CandidateLists:
    """Lists for a batch: ``items`` [B, K] (0 = empty slot), ``scores`` [B, K] (-inf at empty slots).

    ``missing[b]`` is True where no list could be had (the row is empty); the caller falls back.
    """

    items: np.ndarray
    scores: np.ndarray
    missing: np.ndarray

    @classmethod
    def empty(cls, rows: int, k: int) -> CandidateLists:
        return cls(np.zeros((rows, k), np.int64), np.full((rows, k), -np.inf), np.ones(rows, bool))

    def hard_negatives(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """The rows that hold a list, and each one's items: the negatives of collaborative training.

        ``inputs[r]`` is row r's example without its target. Its items leave the list, as at inference, where
        the device drops what its user has consumed: a fresher prefix's list, made from the older cloud view,
        can hold items the example's input already has. A row left without a list is dropped, not kept with
        no negatives: training reads an example with no hard negatives as a whole sequence, so a cloud outage
        would add copies of the node's sequences.
        """
        if len(inputs) != len(self.items):
            raise ValueError(f"inputs must hold one example per list ({len(self.items)}), got {len(inputs)}.")
        kept = ~self.missing[:, None] & (self.items > 0)
        for row, seen in enumerate(inputs):
            kept[row] &= ~np.isin(self.items[row], seen)
        rows = np.flatnonzero(kept.any(axis=1))
        return rows, [self.items[r][kept[r]] for r in rows]


class CloudClient:
    """Batched ``POST /v1/candidates`` with a timeout, bounded retries and exponential back-off.

    A 4xx answer means the device sent something the schema forbids, or the wrong key: it is raised as
    ``ProtocolError`` at once (retrying cannot help), except 408 and 429 (a proxy's timeout, a rate limit),
    which are transient. Those, connection failures, timeouts, 5xx answers and replies that break the schema
    are retried ``retries`` times, then raised as ``CloudUnavailableError``; so is, at once, a reply with the
    wrong number of lists, lists longer than K or items outside the catalogue (a foreign service).
    ``timeout_s`` bounds each HTTP request (an attempt's first also asks ``/healthz`` for the catalogue), headers
    and body, not only each read: a server that trickles its reply cannot hold a device. The bearer key is
    ``api_key``, else ``$LSC4REC_API_KEY`` (the variable ``lsc4rec llm serve`` reads its key from).
    An https service is verified against ``ca_file``, else ``$LSC4REC_SERVICE_CA``, else the public CAs; a
    certificate that fails verification is a ``ProtocolError`` at once, as a wrong key is, because no retry
    and no fallback list can fix a device's settings.

    ``catalogue`` is the device data's (number of items, :func:`~lsc4rec.protocol.catalogue_digest`). Before
    the first request the service's ``/healthz`` is compared with it: an LLM that numbers items otherwise
    would answer with other items than the device means, and no error anywhere, so that is a ``ProtocolError``.
    That check is part of the first attempt, so a service that does not answer costs no time beyond the retries.

    ``cooldown_s > 0`` records a service that failed every attempt in :data:`OUTAGES`, and the clients of this
    process then skip it for that long (``CloudUnavailableError`` at once); 0 keeps no record and skips nothing.

    ``posted`` counts the histories this client has sent the service, each request once however many attempts
    it took, answered or not: what the service may have received (a request skipped in a cooldown is not).
    """

    def __init__(
        self,
        url: str,
        k: int,
        timeout_s: float = 20.0,
        retries: int = 2,
        api_key: str | None = None,
        catalogue: tuple[int, str] | None = None,
        ca_file: str | None = None,
        cooldown_s: float = 0.0,
    ) -> None:
        self.base = url.rstrip("/")
        self.url = self.base + "/v1/candidates"
        self.k = k
        self.retries = retries
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self.catalogue = catalogue
        self.catalogue_checked = catalogue is None  # nothing to check without one
        self.ca_file = ca_file if ca_file is not None else os.environ.get(SERVICE_CA_ENV) or None
        self.headers = bearer_headers(api_key)
        self.http = self._connect()
        self.posted = 0

    def _connect(self) -> httpx.Client:
        # replies uncompressed: a kilobyte of nested gzip would otherwise inflate to gigabytes before any bound
        headers = {"Accept-Encoding": "identity", **self.headers}
        return httpx.Client(timeout=self.timeout_s, headers=headers, verify=client_context(self.ca_file))

    def candidates(self, histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Ranked items and scores [B, K] for each history (all of them, or ``CloudUnavailableError``)."""
        items = np.zeros((len(histories), self.k), np.int64)
        scores = np.full((len(histories), self.k), -np.inf)
        for start, chunk_items, chunk_scores in self.chunks(histories):
            items[start : start + len(chunk_items)] = chunk_items
            scores[start : start + len(chunk_scores)] = chunk_scores
        return items, scores

    def chunks(self, histories: Sequence[np.ndarray]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Each request's first row and its ranked items and scores [rows, K], as the service answers them.

        Histories go ``MAX_BATCH`` to a request, so a caller can keep the chunks answered before one fails.
        The newest ``MAX_HISTORY`` items are sent as the history and up to ``MAX_HISTORY`` older ones as
        exclusions, so that a long history's older items are not returned either (the LLM reads only the newest
        items anyway); beyond that the device drops them from the list (``clients.inference.drop_seen``).
        """
        limit = self.catalogue[0] if self.catalogue else None  # the device's number of items
        for start in range(0, len(histories), MAX_BATCH):
            rows = [np.asarray(h).tolist() for h in histories[start : start + MAX_BATCH]]
            chunk = [row[-MAX_HISTORY:] for row in rows]
            older = [row[-2 * MAX_HISTORY : -MAX_HISTORY] for row in rows]
            exclude = older if any(older) else None
            answer = self._post(CandidateRequest(histories=chunk, k=self.k, exclude=exclude))
            top = max((max(r.items, default=0) for r in answer.lists), default=0)
            longest = max((len(r.items) for r in answer.lists), default=0)
            if len(answer.lists) != len(chunk):
                problem = f"{len(chunk)} histories with {len(answer.lists)} lists"
            elif longest > self.k:
                problem = f"with a list of {longest} items, longer than K = {self.k}"
            elif limit is not None and top > limit:
                problem = f"with items beyond the catalogue's {limit} (item {top})"
            else:
                problem = None
            if problem:
                raise CloudUnavailableError(
                    f"candidate service at {self.url} answered {problem}; is it this project's service, on "
                    "this data?"
                )
            items = np.zeros((len(chunk), self.k), np.int64)
            scores = np.full((len(chunk), self.k), -np.inf)
            for row, ranked in enumerate(answer.lists):
                items[row, : len(ranked.items)] = ranked.items
                scores[row, : len(ranked.scores)] = ranked.scores
            yield start, items, scores

    def _check_catalogue(self) -> None:
        """Compare the service's catalogue with the device's, once; a service that does not say is trusted.

        An unreachable service, or one answering a 5xx but 501, 408 or 429 (a proxy's error page, a service
        still starting), raises ``httpx.HTTPError``: the attempt it belongs to has failed, and the check is not
        skipped. 501 and other 4xx say the service has no such page: it does not report its catalogue.
        """
        if self.catalogue_checked:
            return
        status, body, _ = self._send("GET", self.base + "/healthz")
        if status in TRANSIENT_4XX or (status >= 500 and status != HTTPStatus.NOT_IMPLEMENTED):
            raise httpx.HTTPError(f"/healthz answered HTTP {status}")
        try:
            health = json.loads(body)
            served = (int(health["num_items"]), health["catalogue"])
        # a foreign health page: Infinity items overflow int(), a deeply nested one recurses
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
            self.catalogue_checked = True
            return
        if served[1] is not None and served != self.catalogue:
            raise ProtocolError(
                "catalogue",
                f"the candidate service at {self.base} serves an LLM of another item numbering ({served[0]} "
                f"items, digest {served[1]}) than this node's data ({self.catalogue[0]} items, digest "
                f"{self.catalogue[1]}): its lists would name other items. Serve the checkpoint trained on this "
                "data (the same dataset, k-core, numbering and seed), or prepare the data as it was.",
            )
        self.catalogue_checked = True  # not again for this client

    def _post(self, request: CandidateRequest) -> CandidateResponse:
        retries = self.retries
        if self.cooldown_s > 0 and (until := OUTAGES.skip_until(self.base)) is not None:
            if time.monotonic() < until:
                raise CloudUnavailableError(
                    f"candidate service at {self.url} skipped: it failed here (this process or this node) and is "
                    f"tried again in {until - time.monotonic():.0f} s (federation.cloud_cooldown_s)."
                )
            retries = 0  # a probe: one attempt, and a success forgets the outage
        delay = 0.5
        unsent = len(request.histories)  # counted in ``posted`` at the first attempt that sends them
        for attempt in range(retries + 1):
            busy = None  # seconds a service that is up but full asks us to wait (503 with Retry-After)
            try:
                self._check_catalogue()
                self.posted, unsent = self.posted + unsent, 0
                status, body, headers = self._send(
                    "POST",
                    self.url,
                    content=request.model_dump_json(),
                    headers={"Content-Type": "application/json"},
                )
            except httpx.HTTPError as exc:
                self._check_certificate(exc)
                problem = f"{type(exc).__name__}: {exc}"
            else:
                text = body.decode(errors="replace")
                if status < 400:
                    try:
                        answer = CandidateResponse.model_validate_json(body)
                    except ValidationError as exc:
                        first = exc.errors()[0]
                        where = ".".join(map(str, first["loc"])) or "body"
                        problem = f"a reply outside the schema ({where}: {first['msg']}): {text[:200]}"
                    else:
                        OUTAGES.answered(self.base)
                        return answer
                elif status < 500 and status not in TRANSIENT_4XX:
                    key = (
                        f" Set ${API_KEY_ENV} on this device to the service's key."
                        if status in (401, 403)
                        else ""
                    )
                    raise ProtocolError(
                        "request", f"the candidate service refused it ({status}): {text[:300]}{key}"
                    )
                else:
                    problem = f"HTTP {status}: {text[:200]}"
                    busy = _retry_after(status, headers)
            if attempt < retries:
                time.sleep(max(delay, min(busy or 0.0, self.timeout_s)))
                delay *= 2
        if self.cooldown_s > 0 and busy is None:  # a full service is up: the next fetch may find room
            OUTAGES.failed(self.base, self.cooldown_s)
        raise CloudUnavailableError(
            f"candidate service at {self.url} unavailable after {retries + 1} "
            f"attempts ({problem}). Start it with `lsc4rec llm serve`, or check federation.service_url."
        )

    def _send(self, method: str, url: str, **kwargs: Any) -> tuple[int, bytes, httpx.Headers]:
        """One request's status, body and headers, whole within ``timeout_s`` of the start, or ``httpx.ReadTimeout``.

        httpx's timeout bounds each read, not the answer: a server sending a byte a second, of its headers or
        its body, would hold the device for as long as it liked. So the request runs in a thread that is waited
        for ``timeout_s``; one still running then is left to end on its own (it stops reading a body at the
        deadline, and a trickle of headers ends with the server), and its connection with it: later attempts
        get a client of their own.
        """
        deadline = time.monotonic() + self.timeout_s
        late = f"no whole answer within {self.timeout_s:g} s"
        http, outcome = self.http, {}

        def attempt() -> None:
            try:
                with http.stream(method, url, **kwargs) as response:
                    # a redirect is a device setting no retry fixes, as a wrong key is
                    if 300 <= response.status_code < 400:
                        raise ProtocolError(
                            "federation.service_url",
                            f"the candidate service at {self.base} redirects to "
                            f"{response.headers.get('location', 'another address')} (HTTP "
                            f"{response.status_code}): set it to the address that answers.",
                        )
                    encoding = response.headers.get("content-encoding", "identity").strip().lower()
                    if encoding not in ("identity", ""):
                        raise httpx.DecodingError(
                            f"a reply encoded {encoding!r}, which the device does not accept",
                            request=response.request,
                        )
                    body = bytearray()
                    for chunk in response.iter_raw():
                        body += chunk
                        if time.monotonic() > deadline:
                            raise httpx.ReadTimeout(late, request=response.request)
                        if len(body) > MAX_REPLY_BYTES:  # a foreign server's stream, not a list reply
                            raise httpx.ReadError(
                                f"a reply over {MAX_REPLY_BYTES} bytes", request=response.request
                            )
                outcome["answer"] = (response.status_code, bytes(body), response.headers)
            except Exception as exc:  # handed to the caller's thread
                outcome["error"] = exc

        worker = threading.Thread(target=attempt, name="cloud-request", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            self.http = self._connect()  # the stuck connection stays with the thread
            raise httpx.ReadTimeout(late)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["answer"]

    def _check_certificate(self, exc: httpx.HTTPError) -> None:
        """Raise a ``ProtocolError`` when ``exc`` is the service's certificate failing verification."""
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            trusted = f"the CA in {self.ca_file}" if self.ca_file else "the public CAs"
            raise ProtocolError(
                "tls",
                f"the candidate service at {self.base} presents a certificate that fails verification against "
                f"{trusted} ({cause.verify_message}). Set {SERVICE_CA_ENV} to the CA file that signed it, or "
                "reach the service by a host name its certificate names.",
            )

    def close(self) -> None:
        self.http.close()


@dataclass
class ListCache:
    """Candidate lists keyed by (user, prefix length), storable in Flower's node state (``context.state``)."""

    lists: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # lists that could not be had from the cloud since this cache was made or loaded: the handler's reply counts
    # them, and the state does not keep them (the server sums the replies)
    fallbacks: int = 0
    # histories sent to the cloud for lists it lacked, since it was made or loaded (``CloudClient.posted``)
    sent: int = 0

    def fetch(
        self, client: CloudClient, users: Sequence[int], prefixes: Sequence[np.ndarray]
    ) -> CandidateLists:
        """Lists for ``prefixes`` of ``users``: from the cache, else batched requests for the rest.

        Each missing key is asked for once, however many rows share it. When the cloud fails, the chunks it
        answered before are kept, and the rows it should have filled are returned ``missing``; each list that
        could not be had is counted once.
        """
        keys = [(int(u), len(p)) for u, p in zip(users, prefixes, strict=True)]
        out = CandidateLists.empty(len(keys), client.k)
        todo = {key: prefix for key, prefix in zip(keys, prefixes, strict=True) if key not in self.lists}
        asked, answered, posted = list(todo), 0, client.posted
        try:
            for start, items, scores in client.chunks(list(todo.values())):
                for row, key in enumerate(asked[start : start + len(items)]):
                    self.lists[key] = (items[row], scores[row])
                answered = start + len(items)
        except CloudUnavailableError as exc:
            log.warning("%s; serving %d lists from fallbacks", exc, len(asked) - answered)
            self.fallbacks += len(asked) - answered
        self.sent += client.posted - posted
        for i, key in enumerate(keys):
            if key in self.lists:
                cached_items, cached_scores = self.lists[key]
                width = min(client.k, len(cached_items))
                out.items[i, :width], out.scores[i, :width] = cached_items[:width], cached_scores[:width]
                out.missing[i] = False
        return out

    def to_record(self) -> ArrayRecord:
        keys = np.array(list(self.lists), dtype=np.int64).reshape(-1, 2)
        items = np.stack([v[0] for v in self.lists.values()]) if self.lists else np.zeros((0, 1), np.int64)
        scores = np.stack([v[1] for v in self.lists.values()]) if self.lists else np.zeros((0, 1))
        return ArrayRecord(
            {
                "keys": Array(keys),
                "items": Array(items),
                "scores": Array(scores),
            }
        )

    @classmethod
    def from_record(cls, record: ArrayRecord | None) -> ListCache:
        if record is None:
            return cls()
        keys, items, scores = (record[name].numpy() for name in ("keys", "items", "scores"))
        lists = {(int(u), int(n)): (items[i], scores[i]) for i, (u, n) in enumerate(keys)}
        return cls(lists)
