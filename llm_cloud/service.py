"""The candidate service (FastAPI): validate, call ``engine.candidates``, map the result. It only routes.

``POST /v1/candidates`` takes a :class:`~lsc4rec.protocol.CandidateRequest` and answers a
:class:`~lsc4rec.protocol.CandidateResponse`; ``GET /healthz``; ``GET /metrics`` (Prometheus text). Every error
is a JSON body ``{"error": {"field": ..., "message": ...}}``; the exception-to-status table is
:data:`STATUS`: malformed JSON 400, wrong API key 401, unknown path 404, wrong method 405, no Content-Length
(or a chunked body) 411, a body over :data:`~lsc4rec.protocol.MAX_BODY_BYTES` 413, a body that is not declared
JSON 415, schema or item-id violations 422, engine failure 503, and 503 with ``Retry-After`` to a candidate
request beyond the ``max_in_flight`` the service holds at once. The size is judged from Content-Length before
the body is read, so an oversized request costs the service no memory (which is why a body without a length is
refused), and the bound on requests in flight bounds what their bodies can take together (a device retries a
503, then falls back).
A body that has not arrived within ``body_timeout_s`` of its head is answered 408 and its place freed.
Client input never gets a 500.

A request is parsed, ranked and encoded on the engine's own threads (:attr:`CandidateEngine.workers`), never on
the event loop or Starlette's shared pool: ``/healthz`` and ``/metrics`` then answer at once however many
requests wait (they waited 5 s behind 60 queued ones when every route shared the pool), a large body's parse
stalls no other request, and the model's freed memory stays in a few threads' malloc arenas (60 concurrent
requests had grown the service from 0.7 to 2.3 GB, one arena per pool thread).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import reprlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from llm_cloud.engines import CandidateEngine, EngineError
from llm_cloud.prometheus import ServiceMetrics
from lsc4rec.errors import ProtocolError
from lsc4rec.protocol import (
    API_KEY_ENV,
    BODY_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_IN_FLIGHT,
    CandidateList,
    CandidateRequest,
    CandidateResponse,
)

CANDIDATES_PATH = "/v1/candidates"
STATUS = {
    "invalid_json": 400,
    "disconnected": 400,  # in the counters only: the client hung up before its body came
    "unauthorized": 401,
    "not_found": 404,
    "method_not_allowed": 405,
    "slow_body": 408,
    "length_required": 411,
    "too_large": 413,
    "not_json": 415,
    "invalid_request": 422,
    "engine": 503,
    "busy": 503,
}
ENDPOINTS = f"POST {CANDIDATES_PATH}, GET /healthz, GET /metrics"


def create_app(
    engine: CandidateEngine,
    api_key: str | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> FastAPI:
    """The service over ``engine``; with ``api_key`` set, candidate requests need ``Authorization: Bearer <key>``.

    At most ``max_in_flight`` candidate requests are held at once; one more is answered 503 before its body is
    read, and a body that takes longer than ``body_timeout_s`` to arrive 408.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # made at each start, so that an app started again (a test client, an embedding server) has threads
        app.state.workers = ThreadPoolExecutor(engine.workers, thread_name_prefix="engine")
        try:
            yield
        finally:
            app.state.workers.shutdown(wait=False, cancel_futures=True)

    # no /docs, /redoc or /openapi.json: the service answers the endpoints it documents and nothing else
    # (FastAPI's docs page would also load scripts from a CDN); nor a bodiless redirect for a trailing slash
    app = FastAPI(
        title="LSC4Rec candidate service",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
        lifespan=lifespan,
    )
    metrics = ServiceMetrics()
    in_flight = 0  # candidate requests between the middleware and their reply (all on the event loop)

    def error(request: Request, kind: str, field: str, message: str) -> JSONResponse:
        if request.url.path == CANDIDATES_PATH:  # the error counter counts failed candidate requests only
            metrics.error(kind)
        return JSONResponse({"error": {"field": field, "message": message}}, status_code=STATUS[kind])

    @app.middleware("http")
    async def authorize_and_time(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path != CANDIDATES_PATH:
            return await call_next(request)
        started = time.perf_counter()
        if api_key and not _bearer_matches(request.headers.get("authorization", ""), api_key):
            response = error(
                request,
                "unauthorized",
                "Authorization",
                "must be 'Bearer <api key>' with the service's key. "
                "Pass the key the service was started with.",
            )
            response.headers["WWW-Authenticate"] = "Bearer"  # RFC 7235: a 401 names the scheme it wants
        elif request.method == "POST" and (refusal := _refuse_body(request.headers)):
            response = error(request, *refusal)
        elif request.method == "POST" and in_flight >= max_in_flight:  # a GET here is answered 405
            response = error(
                request,
                "busy",
                "request",
                f"the service holds {max_in_flight} candidate requests already. Retry in a second; "
                "`lsc4rec llm serve --max-in-flight N` raises the bound.",
            )
            response.headers["Retry-After"] = "1"
        else:
            response = await _held(call_next, request)
        metrics.observe(response.status_code, time.perf_counter() - started)
        return response

    async def _held(call_next: Callable[[Request], Awaitable[Response]], request: Request) -> Response:
        nonlocal in_flight
        in_flight += 1
        try:
            return await call_next(request)
        finally:
            in_flight -= 1

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
        if first["type"] == "json_invalid":
            return error(
                request, "invalid_json", "body", f"must be valid JSON, got a parse error ({first['msg']})."
            )
        if first["type"] == "value_error":  # our own validators' messages already say what they got
            return error(request, "invalid_request", field, str(first["ctx"]["error"]))
        return error(request, "invalid_request", field, f"{first['msg']} (got {_short(first.get('input'))}).")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's router (404, 405) and FastAPI's body reader (400) raise these; their default body
        # {"detail": ...} would break the one error form
        if exc.status_code == STATUS["not_found"]:
            message = f"{request.url.path} is not an endpoint. The endpoints: {ENDPOINTS}."
            return error(request, "not_found", "path", message)
        if exc.status_code == STATUS["method_not_allowed"]:
            message = f"{request.method} is not allowed on {request.url.path}. The endpoints: {ENDPOINTS}."
            return error(request, "method_not_allowed", "method", message)
        return error(
            request, "invalid_json", "body", f"must be a JSON body the service can read ({exc.detail})."
        )

    @app.exception_handler(ProtocolError)
    async def protocol(request: Request, exc: ProtocolError) -> JSONResponse:
        return error(request, "invalid_request", exc.field, str(exc).removeprefix(f"{exc.field}: "))

    @app.exception_handler(EngineError)
    async def engine_down(request: Request, exc: EngineError) -> JSONResponse:
        failure = str(exc).rstrip(".")
        return error(request, "engine", "engine", f"the candidate engine failed: {failure}. Retry later.")

    def answer(body: bytes) -> Response:
        """One candidate request, from its body to its reply, on an engine thread."""
        try:  # pydantic's own JSON parser: FastAPI's json.loads would build the whole tree in Python first
            request = CandidateRequest.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None
        _check_items(request.histories, "histories", engine.num_items)
        _check_items(request.exclude or [], "exclude", engine.num_items)
        lists = engine.candidates(request.histories, request.k, request.exclude)
        try:
            response = CandidateResponse(
                lists=[CandidateList(items=i, scores=s) for i, s in lists], model=engine.model_name
            )
        except ValidationError as exc:  # the engine broke the schema (a repeated item), not the client
            raise EngineError(f"its lists break the reply's schema ({exc.errors()[0]['msg']})") from None
        metrics.served(len(lists), sum(len(items) for items, _ in lists))
        # Serialised by pydantic directly: FastAPI's response_model path re-validates and encodes in Python,
        # which measured ~90 ms at batch 256 against ~5 ms here.
        return Response(response.model_dump_json(), media_type="application/json")

    @app.post(CANDIDATES_PATH)
    async def candidates(request: Request) -> Response:
        # the middleware has bounded the body by its Content-Length, so reading it whole is safe
        try:
            body = await asyncio.wait_for(request.body(), body_timeout_s)
        except TimeoutError:
            return error(
                request,
                "slow_body",
                "body",
                f"must arrive within {body_timeout_s:g} s of the request's head. Send it at once, or smaller "
                "batches over a slow link.",
            )
        # nobody reads this answer; it is counted, instead of a 500 and a traceback in the log
        except ClientDisconnect:
            return error(request, "disconnected", "body", "the client hung up before its body came.")
        return await asyncio.get_running_loop().run_in_executor(request.app.state.workers, answer, body)

    @app.get("/healthz")
    async def healthz() -> dict[str, object]:
        return {
            "status": "ok",
            "model": engine.model_name,
            "num_items": engine.num_items,
            "catalogue": engine.catalogue,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> str:
        return metrics.render()

    return app


def _bearer_matches(header: str, api_key: str) -> bool:
    """Whether an Authorization header carries ``api_key`` (the scheme's case is free, RFC 7235), in constant time."""
    scheme, _, sent = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(sent.encode(), api_key.encode())


def _refuse_body(headers: Headers) -> tuple[str, str, str] | None:
    """Why a candidate request's body is not read at all, as (kind, field, message); None when it may be."""
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return "not_json", "Content-Type", f"must be application/json, got {media_type or 'none'}."
    if "transfer-encoding" in headers:  # a chunked body is read whole whatever its Content-Length says
        return (
            "length_required",
            "Transfer-Encoding",
            "must not be sent: the service bounds a body's size by its Content-Length. Send the body whole.",
        )
    length = headers.get("content-length")
    if length is None or not length.isdigit():
        return "length_required", "Content-Length", "must be sent: the service bounds a body's size by it."
    if int(length) > MAX_BODY_BYTES:
        return (
            "too_large",
            "body",
            f"must be at most {MAX_BODY_BYTES} bytes, got {length}. Split the batch into smaller requests.",
        )
    return None


def _check_items(rows: list[list[int]], name: str, num_items: int) -> None:
    """Every id in 1..N (the schema already bounds it below); the first offender is named."""
    for r, row in enumerate(rows):
        for c, item in enumerate(row):
            if item > num_items:
                raise ProtocolError(
                    f"{name}.{r}.{c}",
                    f"must be an item id in 1..{num_items}, got {_short(item)}. "
                    "Send ids of the catalogue this model was trained on.",
                )


def _short(value: object, limit: int = 80) -> str:
    """An input as the error quotes it, bounded before it is written out (a body can hold millions of ids)."""
    bounded = reprlib.Repr()
    bounded.maxlist, bounded.maxstring, bounded.maxlong, bounded.maxother = 8, 60, 40, 60
    text = bounded.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def exposure_warning(
    host: str,
    api_key: str | None,
    how: str = f"{API_KEY_ENV} (or --api-key)",
    tls: bool | None = None,
    encrypt: str = "Pass --ssl-certfile and --ssl-keyfile",
) -> str | None:
    """A warning when a server (this service, or vLLM) would listen beyond loopback without a key, else ``None``.

    Anyone who reaches such a port can have the LLM rank items for any history. ``how`` names where the key
    is set. ``tls=False`` (a server over plain http) also warns a keyed server beyond loopback: its key and
    the users' histories would cross the network readable by anyone on the path; ``encrypt`` says what to do.
    """
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        loopback = host == "localhost"
    if loopback:
        return None
    if not api_key:
        return (
            f"listening on {host} without a key: anyone who reaches the port can use it. Set {how} here and on "
            "its clients"
        )
    if tls is False:
        return (
            f"listening on {host} over plain http: the key and the users' histories cross the network "
            f"unencrypted. {encrypt}"
        )
    return None
