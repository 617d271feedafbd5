import dataclasses
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from clients.cloud import OUTAGES, CloudClient
from llm_cloud.checkpoint import catalogue_of
from llm_cloud.engines.base import EngineError
from llm_cloud.engines.transformers_engine import TransformersEngine
from llm_cloud.engines.vllm_engine import VLLM_PLAIN_HTTP, VLLMEngine
from llm_cloud.model import ItemTokenLM
from llm_cloud.processes import free_port, start_service
from llm_cloud.service import create_app, exposure_warning
from lsc4rec.errors import CloudUnavailableError
from lsc4rec.protocol import (
    MAX_BATCH,
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    MAX_HISTORY,
    MAX_K,
    MAX_REPLY_BYTES,
    CandidateList,
    CandidateRequest,
    CandidateResponse,
)
from tests.conftest import NUM_ITEMS, answering_server
from tests.llm_cloud.conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def post(url: str, body, headers=AUTH, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/candidates", json=body, headers=headers, timeout=30, **kwargs)


def test_service_happy_path_returns_the_models_lists(service_url, tiny_checkpoint) -> None:
    body = {"histories": [[1, 2, 3], [10]], "k": 5, "exclude": [[4], []]}
    reply = post(service_url, body)
    assert reply.status_code == 200, reply.text
    response = CandidateResponse.model_validate(reply.json())
    expected = ItemTokenLM.from_pretrained(tiny_checkpoint).top_k(body["histories"], 5, body["exclude"])
    assert [lst.items for lst in response.lists] == [items for items, _ in expected]
    assert response.model == tiny_checkpoint.name
    assert 4 not in response.lists[0].items


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"histories": [[1, NUM_ITEMS + 1]], "k": 5}, "histories.0.1"),
        ({"histories": [[0]], "k": 5}, "histories.0.0"),
        ({"histories": [[-3]], "k": 5}, "histories.0.0"),
        ({"histories": [[1]], "k": 5, "exclude": [[NUM_ITEMS + 7]]}, "exclude.0.0"),
        ({"histories": [[1]], "k": 5, "exclude": [[], []]}, "exclude"),
        ({"histories": [[1], [2]], "k": 5, "exclude": [[3]]}, "exclude"),
        ({"histories": [[]], "k": 5}, "histories.0"),
        ({"histories": [], "k": 5}, "histories"),
        ({"histories": [[1]], "k": 0}, "k"),
        ({"histories": [[1]], "k": MAX_K + 1}, "k"),
        ({"histories": [[1]], "k": "5"}, "k"),
        ({"histories": [[1.5]], "k": 5}, "histories.0.0"),
        ({"histories": [[1]] * (MAX_BATCH + 1), "k": 5}, "histories"),
        ({"histories": [[1] * (MAX_HISTORY + 1)], "k": 5}, "histories.0"),
        ({"histories": [[1]], "k": 5, "temperature": 2}, "temperature"),
        ({"k": 5}, "histories"),
        ([1, 2], "body"),
    ],
)
def test_service_bad_input_is_422_naming_the_field(service_url, body, field) -> None:
    reply = post(service_url, body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["field"] == field


def test_service_malformed_json_is_400(service_url) -> None:
    reply = httpx.post(
        f"{service_url}/v1/candidates",
        content=b'{"histories": [[1, 2]',
        timeout=10,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["field"] == "body"


def test_service_names_a_mismatched_exclude_without_echoing_the_request(service_url) -> None:
    reply = post(service_url, {"histories": [[1]], "k": 5, "exclude": [[2], [3]]})
    message = reply.json()["error"]["message"]
    assert message.startswith("must hold one list per history (1), got 2.") and "Value error" not in message
    assert "(got" not in message  # the whole request is not echoed back


def test_the_largest_valid_request_fits_the_body_bound() -> None:
    widest_id = 10**7 - 1  # seven digits: more items than any catalogue here
    rows = [[widest_id] * MAX_HISTORY] * MAX_BATCH
    body = CandidateRequest(histories=rows, k=MAX_K, exclude=rows).model_dump_json()
    assert len(body.encode()) <= MAX_BODY_BYTES


def test_the_largest_valid_reply_fits_what_a_device_reads() -> None:
    widest_id = 10**7 - 1
    widest_score = -12.345678901234567  # as many digits as a float64 prints
    ranked = CandidateList(items=list(range(widest_id - MAX_K, widest_id)), scores=[widest_score] * MAX_K)
    body = CandidateResponse(lists=[ranked] * MAX_BATCH, model="m" * 255).model_dump_json()
    assert 2 * 2**20 < len(body.encode()) <= MAX_REPLY_BYTES


def test_a_body_of_bad_ids_costs_one_error_per_field() -> None:
    # the service reports the first error only; collecting all of them (a quarter million here) held its event
    # loop for seconds and took hundreds of MB
    rows = [["a"] * MAX_HISTORY] * MAX_BATCH
    with pytest.raises(ValidationError) as raised:
        CandidateRequest.model_validate({"histories": rows, "k": 3, "exclude": rows})
    assert [error["loc"] for error in raised.value.errors()] == [("histories", 0, 0), ("exclude", 0, 0)]


JSON_BODY = b'{"histories": [[1]], "k": 3}'


@pytest.mark.parametrize(
    ("content_type", "content", "status", "field"),
    [
        ("text/plain", JSON_BODY, 415, "Content-Type"),
        (None, JSON_BODY, 415, "Content-Type"),
        ("application/json", iter([JSON_BODY[:10], JSON_BODY[10:]]), 411, "Transfer-Encoding"),  # chunked
    ],
)
def test_service_refuses_a_body_not_declared_json_or_of_unknown_length(
    service_url, content_type, content, status, field
) -> None:
    with httpx.Client(timeout=10) as client:
        request = client.build_request("POST", f"{service_url}/v1/candidates", headers=AUTH, content=content)
        if content_type is not None:
            request.headers["Content-Type"] = content_type
        reply = client.send(request)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["field"] == field


def test_service_refuses_an_oversized_body_before_it_arrives(service_url) -> None:
    """Only the headers are sent: the service answers 413 from Content-Length without waiting for the body."""
    host, port = urlsplit(service_url).hostname, urlsplit(service_url).port
    head = (
        f"POST /v1/candidates HTTP/1.1\r\nHost: {host}\r\nAuthorization: {AUTH['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {MAX_BODY_BYTES + 1}\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head.encode())
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        body = reply.read()
    assert reply.status == 413, body
    error = json.loads(body)["error"]
    assert error["field"] == "body" and f"at most {MAX_BODY_BYTES} bytes" in error["message"]


def test_service_refuses_a_chunked_body_whatever_content_length_it_claims(service_url) -> None:
    """A chunked body is read to its last chunk, so a small Content-Length beside it let any size in (40 MiB
    were answered 200); the service refuses it from the head, as it does an oversized length."""
    host, port = urlsplit(service_url).hostname, urlsplit(service_url).port
    head = (
        f"POST /v1/candidates HTTP/1.1\r\nHost: {host}\r\nAuthorization: {AUTH['Authorization']}\r\n"
        "Content-Type: application/json\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head.encode() + f"{len(JSON_BODY):x}\r\n".encode() + JSON_BODY + b"\r\n")
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        body = reply.read()
    assert reply.status == 411, body
    assert json.loads(body)["error"]["field"] == "Transfer-Encoding"


@pytest.mark.parametrize(
    ("method", "path", "status", "field"),
    [
        ("GET", "/v1/candidate", 404, "path"),
        ("GET", "/docs", 404, "path"),  # no undocumented endpoints (FastAPI's docs are off)
        ("GET", "/openapi.json", 404, "path"),
        ("POST", "/v1/candidates/", 404, "path"),  # not a redirect without a body
        ("GET", "/v1/candidates", 405, "method"),
        ("POST", "/healthz", 405, "method"),
    ],
)
def test_service_unknown_path_and_wrong_method_keep_the_error_form(
    service_url, method, path, status, field
) -> None:
    reply = httpx.request(method, f"{service_url}{path}", headers=AUTH, timeout=10)
    assert reply.status_code == status
    assert (
        reply.json()["error"]["field"] == field and "POST /v1/candidates" in reply.json()["error"]["message"]
    )


def test_service_body_that_is_not_utf8_is_400_and_other_paths_are_not_counted(service_url) -> None:
    def errors_total() -> float:
        text = httpx.get(f"{service_url}/metrics", timeout=10).text
        return sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("lsc4rec_errors_total")
        )

    before = errors_total()
    reply = httpx.post(
        f"{service_url}/v1/candidates",
        content=b"\xff\xfe\x00",
        timeout=10,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert reply.status_code == 400 and reply.json()["error"]["field"] == "body"
    httpx.get(f"{service_url}/nowhere", timeout=10)  # a 404 off the candidates path: not a failed request
    assert errors_total() == before + 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": API_KEY},
        {"Authorization": f"Basic {API_KEY}"},  # the key, under another scheme
        {"Authorization": f"Bearer {API_KEY[:4]}"},  # a prefix of the key
    ],
)
def test_service_wrong_api_key_is_401(service_url, headers) -> None:
    reply = post(service_url, {"histories": [[1]], "k": 5}, headers=headers)
    assert reply.status_code == 401 and reply.headers["WWW-Authenticate"] == "Bearer"
    assert reply.json()["error"]["field"] == "Authorization"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
def test_service_reads_the_bearer_scheme_in_any_case(service_url, scheme) -> None:
    reply = post(service_url, {"histories": [[1]], "k": 5}, headers={"Authorization": f"{scheme} {API_KEY}"})
    assert reply.status_code == 200


def test_service_concurrent_clients_get_their_own_answers(service_url) -> None:
    bodies = [{"histories": [[i, i + 1]], "k": 3} for i in range(1, 30)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda b: post(service_url, b), bodies))
    assert all(r.status_code == 200 for r in replies)
    alone = [post(service_url, b).json()["lists"] for b in bodies[:5]]
    assert [r.json()["lists"] for r in replies[:5]] == alone


def test_service_health_and_metrics(service_url, tiny_checkpoint) -> None:
    health = httpx.get(f"{service_url}/healthz").json()  # open without the key: devices check it first
    assert health["status"] == "ok" and health["num_items"] == NUM_ITEMS
    assert health["catalogue"] == catalogue_of(tiny_checkpoint) and len(health["catalogue"]) == 16
    post(service_url, {"histories": [[1]], "k": 4})
    text = httpx.get(f"{service_url}/metrics").text
    assert 'lsc4rec_requests_total{status="200"}' in text
    assert "lsc4rec_items_served_total" in text
    assert 'lsc4rec_request_latency_seconds_bucket{le="+Inf"}' in text


@pytest.mark.parametrize(
    ("vllm_reply", "problem"),
    [
        (None, "unreachable"),  # nothing listens there
        (b"<html>busy</html>", "malformed reply"),
        (b'{"choices": [{"index": 0, "text": "x"}]}', "lacks the expected logprobs"),
        (b'{"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"token_id:5": NaN}]}}]}', "non-finite"),
    ],
)
def test_service_engine_failure_is_503(tiny_checkpoint, tmp_path, vllm_reply, problem) -> None:
    with ExitStack() as stack:
        url = (
            "http://127.0.0.1:9" if vllm_reply is None else stack.enter_context(answering_server(vllm_reply))
        )
        args = ["--checkpoint", str(tiny_checkpoint), "--engine", "vllm", "--vllm-url", url]
        server = stack.enter_context(start_service(args, free_port(), tmp_path / "service.log"))
        reply = post(server.url, {"histories": [[1]], "k": 3}, headers={})
    assert reply.status_code == 503
    assert problem in reply.json()["error"]["message"]
    assert "warning: vLLM at" in (tmp_path / "service.log").read_text()  # said at start, before any request


def test_a_transformers_engine_that_diverges_answers_503_and_is_counted(copied_checkpoint, tmp_path) -> None:
    """Not a 200 of null scores that break the wire schema: what the vLLM engine answers."""
    weights = load_file(copied_checkpoint / "model.safetensors")  # loads, then scores NaN
    save_file(
        {name: torch.full_like(w, float("nan")) for name, w in weights.items()},
        copied_checkpoint / "model.safetensors",
    )
    args = ["--checkpoint", str(copied_checkpoint), "--engine", "transformers"]
    with start_service(args, free_port(), tmp_path / "service.log") as server:
        reply = post(server.url, {"histories": [[1, 2]], "k": 3}, headers={})
        metrics = httpx.get(f"{server.url}/metrics").text
    assert reply.status_code == 503, reply.text
    assert "non-finite" in reply.json()["error"]["message"] and ".." not in reply.json()["error"]["message"]
    assert 'lsc4rec_requests_total{status="503"} 1' in metrics


def test_a_transformers_engine_that_fails_raises_engine_error_naming_the_failure(tiny_checkpoint) -> None:
    """Whatever a forward pass raises (out of memory, a state gone bad) becomes the EngineError the service
    answers 503 for, not a bare 500. A checkpoint's own token ids are checked when it loads, so the failure is
    made in the loaded engine: a prompt token beyond its vocabulary."""
    engine = TransformersEngine(tiny_checkpoint)
    engine.lm.template = dataclasses.replace(engine.lm.template, prefix=[10_000])
    with pytest.raises(EngineError, match=r"^IndexError: index out of range"):
        engine.candidates([[1, 2]], 3)


@pytest.mark.parametrize(
    ("vllm_reply", "problem"),
    [
        (b'{"choices": [{"index": 0, "logprobs": {"top_logprobs": [null]}}]}', "lacks the expected logprobs"),
        (
            b'{"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"token_id:5": 1e999999}]}}]}',
            "non-finite",
        ),
        (
            b'{"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"token_id:5": %d}]}}]}' % 10**400,
            "lacks",
        ),
        (b'{"choices": [{"index": 0}, {"index": 0}]}', "answered prompts [0, 0]"),
    ],
)
def test_the_vllm_engine_refuses_replies_that_are_not_vllms(tiny_checkpoint, vllm_reply, problem) -> None:
    """A proxy or another OpenAI-style server can send these: an EngineError (503), never a crash (500)."""
    with answering_server(vllm_reply) as url:
        engine = VLLMEngine(tiny_checkpoint, url)
        with pytest.raises(EngineError, match=problem.replace("[", r"\[")):
            engine.candidates([[1], [2]] if b"}, {" in vllm_reply else [[1]], 3)


@pytest.mark.parametrize(
    ("digits", "status", "field", "said"),
    [
        (3000, 422, "histories.0.0", "must be an item id"),
        # past what JSON numbers hold here: a parse error that says where, not "an error parsing the body"
        (5000, 400, "body", "number out of range at line 1 column"),
    ],
)
def test_an_error_quotes_a_huge_input_in_a_few_characters(service_url, digits, status, field, said) -> None:
    body = b'{"histories": [[1%s]], "k": 3}' % (b"0" * digits)
    headers = {**AUTH, "Content-Type": "application/json"}
    reply = httpx.post(f"{service_url}/v1/candidates", content=body, headers=headers, timeout=30)
    assert reply.status_code == status and reply.json()["error"]["field"] == field
    assert said in reply.json()["error"]["message"] and len(reply.json()["error"]["message"]) < 200


def test_an_oversized_request_head_is_refused_before_the_key_is_read(service_url) -> None:
    """httptools read a head of any size, seconds of the event loop for 64 MB, before the key was checked."""
    # a head that arrives in several reads (asyncio reads up to 256 KiB at a time) and outgrows the bound
    head = {"X-Padding": "x" * (64 * MAX_HEAD_BYTES)}
    try:
        status = httpx.get(f"{service_url}/healthz", headers=head, timeout=10).status_code
    except (httpx.ReadError, httpx.WriteError):  # it answered 400 and closed while the head was being sent
        status = 400
    assert status == 400
    assert httpx.get(f"{service_url}/healthz", timeout=10).status_code == 200


class HeldEngine(TransformersEngine):
    """The real engine, held at a gate: requests pile up in the service, as under a load it cannot keep up with."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__(checkpoint)
        self.gate, self.arrived = threading.Event(), threading.Event()
        self.threads: set[int] = set()

    def candidates(self, *args, **kwargs):
        self.threads.add(threading.get_ident())
        self.arrived.set()
        self.gate.wait(60)
        return super().candidates(*args, **kwargs)


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` under uvicorn in a thread of this process (so that a test can hold its engine), on 127.0.0.1."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(30)


def test_health_and_metrics_answer_while_candidate_requests_queue(tiny_checkpoint) -> None:
    """45 requests wait on the engine: more than Starlette's 40 pool threads, which /healthz once queued behind.

    They are handed to the engine one at a time, on one thread (a thread each had grown the service's memory
    with an arena each).
    """
    engine = HeldEngine(tiny_checkpoint)
    try:
        with serving(create_app(engine)) as url, ThreadPoolExecutor(45) as pool:
            pending = [pool.submit(post, url, {"histories": [[1 + i % 9]], "k": 3}, {}) for i in range(45)]
            assert engine.arrived.wait(30)
            time.sleep(1.0)  # the others arrive and wait
            assert httpx.get(f"{url}/healthz", timeout=5).json()["status"] == "ok"
            assert "lsc4rec_requests_total" in httpx.get(f"{url}/metrics", timeout=5).text
            engine.gate.set()
            assert [r.result().status_code for r in pending] == [200] * 45
    finally:
        engine.gate.set()
    assert len(engine.threads) == 1


def test_requests_beyond_the_bound_in_flight_are_told_to_retry_before_their_bodies_are_read(
    tiny_checkpoint,
) -> None:
    """Unbounded, every waiting request held its body (up to 8 MiB each) until the engine reached it."""
    engine = HeldEngine(tiny_checkpoint)
    try:
        with serving(create_app(engine, max_in_flight=3)) as url, ThreadPoolExecutor(5) as pool:
            held = [pool.submit(post, url, {"histories": [[1 + i]], "k": 3}, {}) for i in range(3)]
            assert engine.arrived.wait(30)
            time.sleep(0.5)  # the other two reach the service and wait for the engine
            extra = [pool.submit(post, url, {"histories": [[5]], "k": 3}, {}) for _ in range(2)]
            for reply in (r.result(timeout=10) for r in extra):  # at once, while the engine is held
                assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
                assert reply.json()["error"]["field"] == "request"
                assert "holds 3 candidate requests already" in reply.json()["error"]["message"]
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200  # not a candidate request
            engine.gate.set()
            assert [r.result().status_code for r in held] == [200] * 3
            # a request leaves the count however it is answered: three can be held again
            assert post(url, {"histories": [[0]], "k": 3}, {}).status_code == 422
            engine.gate.clear()
            again = [pool.submit(post, url, {"histories": [[1 + i]], "k": 3}, {}) for i in range(3)]
            time.sleep(1.0)
            engine.gate.set()
            assert [r.result().status_code for r in again] == [200] * 3
            assert 'lsc4rec_errors_total{kind="busy"} 2' in httpx.get(f"{url}/metrics", timeout=5).text
    finally:
        engine.gate.set()


def test_a_device_told_the_service_is_full_waits_as_asked_and_does_not_mark_it_down(tiny_checkpoint) -> None:
    """A full service is up: marking it down would skip it for the whole cooldown, on every node of a process."""
    engine = HeldEngine(tiny_checkpoint)
    try:
        with serving(create_app(engine, max_in_flight=1)) as url, ThreadPoolExecutor(1) as pool:
            held = pool.submit(post, url, {"histories": [[1]], "k": 3}, {})
            assert engine.arrived.wait(30)
            client = CloudClient(url, k=3, timeout_s=5.0, retries=1, cooldown_s=60.0)
            started = time.monotonic()
            with pytest.raises(CloudUnavailableError, match=r"after 2 attempts .*HTTP 503"):
                client.candidates([np.array([1, 2])])
            assert time.monotonic() - started >= 1.0  # Retry-After: 1, not the first back-off's 0.5 s
            assert OUTAGES.skip_until(url) is None
            engine.gate.set()
            assert held.result().status_code == 200
            items, _ = client.candidates([np.array([1, 2])])  # tried at once, not skipped
            assert items.shape == (1, 3)
    finally:
        engine.gate.set()


def test_a_body_that_trickles_in_is_answered_408_and_frees_its_place(tiny_checkpoint) -> None:
    """With a bound on requests in flight, a few senders trickling their bodies would otherwise hold every place;
    a sender that hangs up mid-body frees its place too, and is counted, not logged as a server error."""
    app = create_app(TransformersEngine(tiny_checkpoint), max_in_flight=1, body_timeout_s=0.5)
    with serving(app) as url:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        with socket.create_connection((host, port), timeout=10) as slow:
            slow.sendall(
                b"POST /v1/candidates HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"histories": '
            )
            time.sleep(0.2)  # the head is in: it holds the one place
            assert post(url, {"histories": [[1, 2]], "k": 3}, {}).status_code == 503
            started = time.monotonic()
            # the whole reply, read as HTTP: its head and body may come in two writes (one recv got the head only)
            reply = http.client.HTTPResponse(slow)
            reply.begin()
            body = reply.read().decode()
            assert reply.status == 408 and time.monotonic() - started < 5.0
            assert "must arrive within 0.5 s" in body
        assert post(url, {"histories": [[1, 2]], "k": 3}, {}).status_code == 200  # the place is free again
        with socket.create_connection((host, port), timeout=10) as gone:  # and one that hangs up mid-body
            gone.sendall(
                b"POST /v1/candidates HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"histories": '
            )
        time.sleep(0.3)
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert 'lsc4rec_errors_total{kind="disconnected"} 1' in metrics and 'status="500"' not in metrics
        assert post(url, {"histories": [[1, 2]], "k": 3}, {}).status_code == 200


def test_an_app_started_again_still_answers(tiny_checkpoint) -> None:
    """Its engine threads were made once and shut down with the first server: then every request was a 500."""
    app = create_app(TransformersEngine(tiny_checkpoint))
    for _ in range(2):
        with serving(app) as url:
            assert post(url, {"histories": [[1, 2]], "k": 3}, {}).status_code == 200


class RepeatingEngine(TransformersEngine):
    """The real engine with its lists' first item written twice: a broken engine the wire schema refuses."""

    def candidates(self, *args, **kwargs):
        return [([items[0], *items[:-1]], scores) for items, scores in super().candidates(*args, **kwargs)]


def test_an_engine_whose_lists_break_the_schema_answers_503(tiny_checkpoint) -> None:
    with serving(create_app(RepeatingEngine(tiny_checkpoint))) as url:
        reply = post(url, {"histories": [[1, 2]], "k": 3}, {})
    assert reply.status_code == 503, reply.text
    assert "more than once" in reply.json()["error"]["message"]


@pytest.mark.parametrize(
    ("host", "key", "warned"),
    [
        ("127.0.0.1", None, False),
        ("localhost", None, False),
        ("::1", None, False),
        ("0.0.0.0", None, True),
        ("10.1.2.3", "", True),
        ("cloud.example", None, True),
        ("0.0.0.0", "fleet-secret", False),
    ],
)
def test_serving_beyond_loopback_without_a_key_is_warned(host: str, key: str | None, warned: bool) -> None:
    warning = exposure_warning(host, key)
    assert (warning is not None) == warned
    assert warning is None or f"listening on {host} without a key" in warning


@pytest.mark.parametrize(
    ("host", "tls", "warned"),
    [("0.0.0.0", False, True), ("0.0.0.0", True, False), ("127.0.0.1", False, False)],
)
def test_a_keyed_service_beyond_loopback_over_plain_http_is_warned(
    host: str, tls: bool, warned: bool
) -> None:
    """Its key and the users' histories would cross the network in clear."""
    warning = exposure_warning(host, "fleet-secret", tls=tls)
    assert (warning is not None) == warned
    assert warning is None or ("over plain http" in warning and "--ssl-certfile" in warning)
    vllm = exposure_warning(host, "fleet-secret", "VLLM_API_KEY", tls=tls, encrypt=VLLM_PLAIN_HTTP)
    assert (vllm is not None) == warned  # vllm-serve has no TLS options: its warning says what to do instead
    assert vllm is None or (vllm.endswith(VLLM_PLAIN_HTTP) and "--ssl-certfile" not in vllm)
