"""The device <-> cloud wire schema: one request and one response model, and the limits both sides enforce.

The device sends a batch of histories (item ids 1..N, oldest first) and K; the cloud answers one ranked list of
K items with their scores (log-probabilities of the cloud LLM over item tokens) per history. Items in the
history, and in the optional per-history ``exclude`` list, are never returned. Unknown fields are rejected
(``extra="forbid"``) so that a typo is an error, not a silently ignored option.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lsc4rec.errors import ConfigError

MAX_BATCH = 512  # histories per request; larger batches must be split by the client
MAX_HISTORY = 512  # items per history and per exclusion list (devices send their newest items)
MAX_K = 200  # longest candidate list the cloud returns
# Bytes in one request body. The largest valid request (MAX_BATCH histories and exclusion lists of MAX_HISTORY
# seven-digit ids) is about 4.2 MB of compact JSON; the bound leaves room for spaces after the commas and lets
# the service refuse a larger body from its Content-Length alone, before reading it (16 MiB of empty lists
# took 3 s and 400 MB to parse).
MAX_BODY_BYTES = 8 * 2**20
MAX_HEAD_BYTES = 16 * 2**10  # a request's line and headers (a bearer key takes a few dozen bytes)
# Bytes of one reply a device reads: the largest valid one (MAX_BATCH lists of MAX_K ids and float scores) is
# about 3 MB; a longer stream comes from something else, which must not fill the device's memory.
MAX_REPLY_BYTES = 16 * 2**20
# Candidate requests the service holds at once, waiting for the engine or ranked; one more is answered 503 before
# its body is read, so their bodies take at most this many MAX_BODY_BYTES. A simulation keeps four per core in
# flight; past a few dozen, a request waits for the engine longer than a device's timeout anyway.
MAX_IN_FLIGHT = 64
# Seconds a request's body may take to arrive once its head has (the largest valid body, 4.2 MB, takes ~34 s at
# 1 Mbit/s; a device waits 20 s for a whole answer by default): a body trickled in would otherwise hold one of
# the MAX_IN_FLIGHT places for as long as its sender liked.
BODY_TIMEOUT_S = 30.0
# where `lsc4rec llm serve` listens and where devices look for it, unless told otherwise
DEFAULT_PORT = 8800
# The bearer key of a service started with one; the device reads it from its environment, never from the run
# config (which is written into every run folder).
API_KEY_ENV = "LSC4REC_API_KEY"
SERVICE_CA_ENV = "LSC4REC_SERVICE_CA"  # a device's CA file for an https service with a private certificate


def bearer_headers(api_key: str | None, env: str = API_KEY_ENV) -> dict[str, str]:
    """HTTP headers carrying ``api_key``, else the key in ``$env``; none when neither is set."""
    where = f"${env}" if api_key is None else "api_key"
    api_key = os.environ.get(env, "") if api_key is None else api_key
    check_api_key(api_key, where)
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def check_api_key(api_key: str | None, where: str = f"${API_KEY_ENV}") -> None:
    """Refuse a key an HTTP header cannot carry (non-ASCII, spaces, control characters) where it is set."""
    if api_key and not (api_key.isascii() and api_key.isprintable() and " " not in api_key):
        raise ConfigError(where, "must be printable ASCII without spaces: an HTTP header cannot carry it.")
    if api_key and len(api_key) > MAX_HEAD_BYTES // 4:  # the service refuses a longer request head, unread
        raise ConfigError(where, f"must be at most {MAX_HEAD_BYTES // 4} characters, got {len(api_key)}.")


def catalogue_digest(item_ids: Iterable[object]) -> str:
    """A fingerprint of a catalogue's numbering: the original id of item 1, 2, … N, hashed.

    The cloud's LLM and a device must number items alike, or the lists name other items than the device thinks,
    with no error anywhere. Item numbers depend on the dataset, k-core, numbering and seed, so the service
    reports this digest on ``/healthz`` and devices compare it with their own data's.
    """
    return hashlib.sha256("\n".join(str(i) for i in item_ids).encode()).hexdigest()[:16]


ItemId = Annotated[StrictInt, Field(ge=1)]


class CandidateRequest(BaseModel):
    """A batch of histories to turn into candidate lists of length ``k``."""

    model_config = ConfigDict(extra="forbid")

    # fail_fast: the service reports one error, and a body of a quarter million bad ids would otherwise have
    # pydantic build an error for each (seconds on the event loop, hundreds of MB) before the first is read
    histories: list[Annotated[list[ItemId], Field(min_length=1, max_length=MAX_HISTORY, fail_fast=True)]] = (
        Field(min_length=1, max_length=MAX_BATCH, fail_fast=True)
    )
    k: StrictInt = Field(ge=1, le=MAX_K)
    exclude: list[Annotated[list[ItemId], Field(max_length=MAX_HISTORY, fail_fast=True)]] | None = Field(
        default=None, fail_fast=True
    )

    @field_validator("exclude")
    @classmethod
    def _exclude_matches_histories(
        cls, exclude: list[list[int]] | None, info: ValidationInfo
    ) -> list[list[int]] | None:
        histories = info.data.get("histories")  # absent when histories itself failed: that error is reported
        if exclude is not None and histories is not None and len(exclude) != len(histories):
            raise ValueError(
                f"must hold one list per history ({len(histories)}), got {len(exclude)}. "
                "Send one (possibly empty) list per history or omit it."
            )
        return exclude


class CandidateList(BaseModel):
    """One ranked list: ``items[i]`` has score ``scores[i]``, best first; each item once, each score finite.

    A device checks a reply against this model: the LLM never scores an item NaN or infinite (ranking would read
    such an item as broken or as padding), nor names one twice (it would count twice as a hard negative), nor
    lists a better-scored item after a worse one (the device reads the order as the LLM's ranking), so such a
    reply is refused as a broken service's.
    """

    model_config = ConfigDict(extra="forbid")

    items: list[Annotated[ItemId, Field(lt=2**63)]]  # the device holds them in int64 arrays
    scores: list[FiniteFloat]

    @model_validator(mode="after")
    def _paired(self) -> CandidateList:
        if len(self.items) != len(self.scores):
            raise ValueError(
                f"items ({len(self.items)}) and scores ({len(self.scores)}) must pair up one to one."
            )
        if len(set(self.items)) != len(self.items):
            repeated = next(item for item in self.items if self.items.count(item) > 1)
            raise ValueError(f"items must each appear once, got {repeated} more than once.")
        if rise := next((i for i in range(1, len(self.scores)) if self.scores[i] > self.scores[i - 1]), None):
            raise ValueError(
                f"scores must not rise along the list (best first), got {self.scores[rise - 1]} then "
                f"{self.scores[rise]} at position {rise}."
            )
        return self


class CandidateResponse(BaseModel):
    """One list per request history, in request order, and the name of the model that made them."""

    model_config = ConfigDict(extra="forbid")

    lists: list[CandidateList]
    model: str
