"""The device's HTTP client of the candidate service: real service on loopback, dead ports, node-state cache."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest

from clients.cloud import OUTAGES, CandidateLists, CloudClient, ListCache
from llm_cloud.processes import free_port, start_service
from lsc4rec.config import RunConfig
from lsc4rec.credentials import client_context, make_loopback_tls
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.errors import CloudUnavailableError, ConfigError, LSC4RecError, ProtocolError
from lsc4rec.protocol import API_KEY_ENV, MAX_BATCH, MAX_HISTORY, MAX_REPLY_BYTES, SERVICE_CA_ENV
from tests.conftest import answering_server, silent_server


def test_cloud_client_dead_service_raises_after_bounded_retries() -> None:
    client = CloudClient(f"http://127.0.0.1:{free_port()}", k=5, timeout_s=1.0, retries=1)
    started = time.monotonic()
    with pytest.raises(CloudUnavailableError, match="unavailable after 2 attempts"):
        client.candidates([np.array([1, 2, 3])])
    assert time.monotonic() - started < 10


def test_list_cache_falls_back_when_cloud_is_down_and_counts() -> None:
    cache = ListCache({(0, 2): (np.array([7, 8, 9]), np.array([-1.0, -2.0, -3.0]))})
    client = CloudClient(f"http://127.0.0.1:{free_port()}", k=3, timeout_s=0.5, retries=0)
    lists = cache.fetch(client, [0, 1], [np.array([1, 2]), np.array([4, 5, 6])])
    assert lists.items[0].tolist() == [7, 8, 9] and not lists.missing[0]  # served from the cache
    assert lists.missing[1] and lists.items[1].tolist() == [0, 0, 0] and np.isneginf(lists.scores[1]).all()
    assert cache.fallbacks == 1
    inputs = [np.array([1, 2]), np.array([4, 5])]
    rows, hard = lists.hard_negatives(inputs)  # the missing row trains nothing, rather than a whole sequence
    assert rows.tolist() == [0] and [h.tolist() for h in hard] == [[7, 8, 9]]
    # items the example's input holds leave its list, as at inference; a list left empty drops its row
    assert [h.tolist() for h in lists.hard_negatives([np.array([8, 1]), inputs[1]])[1]] == [[7, 9]]
    assert lists.hard_negatives([np.array([9, 7, 8]), inputs[1]])[0].tolist() == []


def test_list_cache_roundtrips_through_node_state() -> None:
    cache = ListCache(
        {
            (3, 4): (np.array([1, 2]), np.array([-0.5, -0.7])),
            (5, 1): (np.array([9, 8]), np.array([0.0, -1.0])),
        },
        fallbacks=2,
    )
    restored = ListCache.from_record(cache.to_record())
    # the lists stay; the fallbacks were the last handler's to reply, and the next one counts its own
    assert restored.fallbacks == 0 and set(restored.lists) == {(3, 4), (5, 1)}
    assert restored.lists[(3, 4)][0].tolist() == [1, 2]
    assert ListCache.from_record(None).lists == {}


def test_cloud_client_real_service_lists_and_caching(service: str) -> None:
    client = CloudClient(service, k=5)
    cache = ListCache()
    histories = [np.array([1, 2, 3]), np.array([10, 11])]
    lists = cache.fetch(client, [0, 1], histories)
    assert not lists.missing.any() and lists.items.shape == (2, 5)
    assert not set(lists.items[0]) & {1, 2, 3}  # the cloud never returns history items
    assert (np.diff(lists.scores, axis=1) <= 1e-6).all()  # ranked best first
    assert (client.posted, cache.sent) == (2, 2)
    again = cache.fetch(CloudClient(f"http://127.0.0.1:{free_port()}", k=5, retries=0), [0, 1], histories)
    assert np.array_equal(again.items, lists.items) and cache.fallbacks == 0  # cached: no request needed
    assert cache.sent == 2  # nothing sent again
    other = ListCache()  # the same client for another cache: each counts what it sent itself
    other.fetch(client, [0, 2], [histories[0], np.array([4, 5])])
    assert (client.posted, other.sent, cache.sent) == (4, 2, 2)


def test_cloud_client_refuses_a_service_that_numbers_items_otherwise(
    service: str, federation_config: RunConfig
) -> None:
    """The service's /healthz names its catalogue; a device whose data number items otherwise stops there."""
    dataset = load_or_prepare(federation_config.data, federation_config.seed)
    mine = (dataset.num_items, dataset.catalogue)
    items, _ = CloudClient(service, k=5, catalogue=mine).candidates([np.array([1, 2, 3])])
    assert (items > 0).all()  # the same numbering: served
    random_numbering = federation_config.override(["data.numbering=random"]).data
    shuffled = load_or_prepare(random_numbering, federation_config.seed)
    other = (shuffled.num_items, shuffled.catalogue)
    assert other[0] == mine[0] and other[1] != mine[1]  # as many items, numbered otherwise
    with pytest.raises(ProtocolError, match="serves an LLM of another item numbering"):
        CloudClient(service, k=5, catalogue=other).candidates([np.array([1, 2, 3])])


def test_cloud_client_unknown_item_is_a_protocol_error(service: str) -> None:
    client = CloudClient(service, k=5)
    with pytest.raises(ProtocolError, match="refused it \\(4"):
        client.candidates([np.array([10_000])])


def test_cloud_client_sends_the_key_from_the_environment(
    federation_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``lsc4rec llm serve`` and the devices read one variable, so a keyed service keeps serving its fleet."""
    monkeypatch.setenv(API_KEY_ENV, "fleet-secret")
    args = ["--checkpoint", str(federation_checkpoint)]
    with start_service(args, free_port(), tmp_path / "service.log") as keyed:  # inherits the variable
        items, _ = CloudClient(keyed.url, k=5).candidates([np.array([1, 2, 3])])
        assert (items > 0).all()
        with pytest.raises(ProtocolError, match=r"refused it \(401.* Set \$LSC4REC_API_KEY on this device"):
            CloudClient(keyed.url, k=5, api_key="wrong").candidates([np.array([1, 2, 3])])


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("two words", "must be printable ASCII without spaces"),
        (
            "k" * 5000,
            "must be at most 4096 characters, got 5000",
        ),  # the service would refuse the head, unread
    ],
)
def test_a_key_no_header_can_carry_is_named_by_its_variable(
    monkeypatch: pytest.MonkeyPatch, key: str, said: str
) -> None:
    monkeypatch.setenv(API_KEY_ENV, key)
    with pytest.raises(ConfigError, match=rf"^\${API_KEY_ENV}: {said}"):
        CloudClient("http://127.0.0.1:9", k=5)


def test_cloud_client_verifies_an_https_service_against_its_ca(
    federation_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device trusts a service with a private certificate only through the CA it was given; without it the
    client stops at once (no retries, no fallback: a device's wrong setting is not an outage)."""
    tls = make_loopback_tls(tmp_path / "tls")
    args = ["--checkpoint", str(federation_checkpoint)]
    with start_service(args, free_port(), tmp_path / "service.log", tls=tls) as secure:
        assert secure.url.startswith("https://127.0.0.1:")
        items, _ = CloudClient(secure.url, k=5, ca_file=str(tls.ca)).candidates([np.array([1, 2, 3])])
        assert (items > 0).all()
        monkeypatch.setenv(SERVICE_CA_ENV, str(tls.ca))  # what a deployment's supernodes are given
        assert (CloudClient(secure.url, k=5).candidates([np.array([1, 2, 3])])[0] == items).all()
        monkeypatch.delenv(SERVICE_CA_ENV)
        started = time.monotonic()
        with pytest.raises(
            ProtocolError, match=f"fails verification against the public CAs.*{SERVICE_CA_ENV}"
        ):
            CloudClient(secure.url, k=5, retries=3).candidates([np.array([1, 2, 3])])
        assert time.monotonic() - started < 3.0  # three retries would sleep 0.5 + 1 + 2 s
        other = make_loopback_tls(tmp_path / "other")  # a CA that did not sign this service's certificate
        with pytest.raises(ProtocolError, match=f"against the CA in {other.ca}"):
            CloudClient(secure.url, k=5, ca_file=str(other.ca)).candidates([np.array([1, 2, 3])])


def test_a_ca_file_that_is_not_a_certificate_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    with pytest.raises(LSC4RecError, match=f"the CA file {bad} cannot be read as a PEM certificate"):
        client_context(str(bad))
    with pytest.raises(LSC4RecError, match=r"cannot be read .*\$LSC4REC_SERVICE_CA"):
        CloudClient("https://127.0.0.1:9", k=5, ca_file=str(tmp_path / "missing.crt"))


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (b'{"lists": [{"items": [4, 5], "scores": [-1.0]}], "model": "m"}', "outside the schema"),
        (b"not json", "outside the schema"),
        (b'{"lists": [{"items": [0, 5], "scores": [-1.0, -2.0]}], "model": "m"}', "outside the schema"),
        # the LLM never scores an item NaN or infinite, nor names one twice (a double hard negative)
        (b'{"lists": [{"items": [4, 5], "scores": [NaN, -2.0]}], "model": "m"}', "outside the schema"),
        (b'{"lists": [{"items": [4, 5], "scores": [-1.0, Infinity]}], "model": "m"}', "outside the schema"),
        (b'{"lists": [{"items": [4, 4], "scores": [-1.0, -2.0]}], "model": "m"}', "4 more than once"),
        # the order is the LLM's ranking, best first
        (
            b'{"lists": [{"items": [4, 5], "scores": [-9.0, -2.0]}], "model": "m"}',
            "must not rise along the list",
        ),
        # an id beyond the int64 arrays the device holds (a client without a catalogue to check it against)
        (b'{"lists": [{"items": [1' + b"0" * 30 + b', 5], "scores": [-1.0, -2.0]}], "model": "m"}', "schema"),
        (b'{"lists": [], "model": "m"}', "answered 1 histories with 0 lists"),
        (
            b'{"lists": [{"items": [4, 5, 6], "scores": [-1, -2, -3]}], "model": "m"}',
            "a list of 3 items, longer than K = 2",
        ),
    ],
)
def test_cloud_client_treats_a_reply_that_breaks_the_schema_as_unavailable(
    reply: bytes, problem: str
) -> None:
    """The device falls back (``CloudUnavailableError``) instead of crashing on a broken or foreign service."""
    with answering_server(reply) as url:
        client = CloudClient(url, k=2, timeout_s=2.0, retries=0)
        with pytest.raises(CloudUnavailableError, match=problem):
            client.candidates([np.array([1, 2, 3])])


def test_cloud_client_asks_for_and_accepts_only_uncompressed_replies() -> None:
    """A kilobyte of nested gzip inflated to 1.6 GB in the device before its size bound could act."""
    listed = gzip.compress(b'{"lists": [{"items": [4, 5], "scores": [-1.0, -2.0]}], "model": "m"}')
    with answering_server(listed, encoding="gzip") as url:
        client = CloudClient(url, k=2, timeout_s=2.0, retries=0)
        assert client.http.headers["Accept-Encoding"] == "identity"
        with pytest.raises(
            CloudUnavailableError, match="a reply encoded 'gzip', which the device does not accept"
        ):
            client.candidates([np.array([1, 2, 3])])


@pytest.mark.parametrize(
    "health",
    [b'{"num_items": Infinity, "catalogue": "x"}', b"[" * 100_000 + b"]" * 100_000],
    ids=["infinite-count", "nested-deep"],
)
def test_a_health_page_that_says_nothing_readable_is_no_word_on_the_catalogue(health: bytes) -> None:
    """A foreign /healthz that int() or the JSON parser cannot take was an OverflowError or a RecursionError out of
    the node's handler; it is a service that does not report its catalogue, as a page without the keys is."""
    listed = b'{"lists": [{"items": [4, 5], "scores": [-1.0, -2.0]}], "model": "m"}'
    with answering_server(listed, health=(200, health)) as url:
        client = CloudClient(url, k=2, timeout_s=5.0, retries=0, catalogue=(40, "0123456789abcdef"))
        items, _ = client.candidates([np.array([1, 2, 3])])
    assert items.tolist() == [[4, 5]] and client.catalogue_checked


def test_cloud_client_stops_reading_a_reply_longer_than_any_list_reply() -> None:
    with answering_server(b"[" + b"1," * (MAX_REPLY_BYTES // 2) + b"1]") as url:
        client = CloudClient(url, k=2, timeout_s=10.0, retries=0)
        with pytest.raises(CloudUnavailableError, match=f"a reply over {MAX_REPLY_BYTES} bytes"):
            client.candidates([np.array([1, 2, 3])])


def test_cloud_client_names_a_redirect_as_a_setting_to_fix() -> None:
    """A proxy's http -> https redirect was retried as a malformed reply and ended as an outage."""
    with answering_server((301, b"moved")) as url:
        client = CloudClient(url, k=2, timeout_s=5.0, retries=2)
        with pytest.raises(ProtocolError, match=r"federation.service_url: .* redirects to .*\(HTTP 301\)"):
            client.candidates([np.array([1, 2, 3])])


def test_cloud_client_gives_up_on_a_trickled_answer_within_its_timeout() -> None:
    """httpx bounds each read, not the answer: a byte every 0.3 s, headers first, would hold a device a minute."""
    body = b'{"lists": [{"items": [4, 5], "scores": [-1.0, -2.0]}], "model": "m"}' + b" " * 140
    with answering_server(body, trickle_s=0.3) as url:
        client = CloudClient(url, k=2, timeout_s=1.0, retries=0)
        started = time.monotonic()
        with pytest.raises(CloudUnavailableError, match="no whole answer within 1 s"):
            client.candidates([np.array([1, 2, 3])])
    assert time.monotonic() - started < 5


def test_cloud_client_treats_items_beyond_its_catalogue_as_a_foreign_service() -> None:
    """Such a list would crash the SRM's embedding lookup; it is a fallback instead. The last item is no such."""
    with answering_server(b'{"lists": [{"items": [40, 5], "scores": [-1.0, -2.0]}], "model": "m"}') as url:
        client = CloudClient(url, k=2, timeout_s=2.0, retries=0, catalogue=(40, "0123456789abcdef"))
        assert client.candidates([np.array([1, 2, 3])])[0].tolist() == [[40, 5]]
    with answering_server(b'{"lists": [{"items": [999, 5], "scores": [-1.0, -2.0]}], "model": "m"}') as url:
        client = CloudClient(url, k=2, timeout_s=2.0, retries=0, catalogue=(40, "0123456789abcdef"))
        with pytest.raises(CloudUnavailableError, match=r"beyond the catalogue's 40 \(item 999\)") as raised:
            client.candidates([np.array([1, 2, 3])])
        assert "longer than K" not in str(raised.value)  # the one condition that failed, not a list of three


def test_a_long_history_is_sent_as_its_newest_items_and_the_older_ones_as_exclusions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = CloudClient("http://127.0.0.1:9", k=2, retries=0)
    sent = []

    def recorded(request: object) -> None:
        sent.append(request)
        raise CloudUnavailableError("recorded")

    monkeypatch.setattr(client, "_post", recorded)
    with pytest.raises(CloudUnavailableError, match="recorded"):
        list(client.chunks([np.arange(1, MAX_HISTORY + 11)]))
    [request] = sent
    assert request.histories == [list(range(11, MAX_HISTORY + 11))] and request.exclude == [
        list(range(1, 11))
    ]


def test_hard_negatives_are_the_lists_items_without_padding_or_the_examples_input() -> None:
    lists = CandidateLists(np.array([[7, 1, 0], [0, 0, 0]]), np.full((2, 3), -1.0), np.zeros(2, dtype=bool))
    rows, hard = lists.hard_negatives([np.array([1]), np.array([2])])
    assert rows.tolist() == [0] and [h.tolist() for h in hard] == [[7]]  # an all-padding row is dropped


def test_the_catalogue_check_is_part_of_the_first_attempt() -> None:
    """A service that never answers costs the retries' time, not a probe's on top (one connection here)."""
    with silent_server() as (url, connections):
        client = CloudClient(url, k=2, timeout_s=0.5, retries=0, catalogue=(40, "x"))
        with pytest.raises(CloudUnavailableError, match="after 1 attempts"):
            client.candidates([np.array([1, 2, 3])])
        assert len(connections) == 1  # the /healthz probe, which failed the attempt: no POST after it
        assert client.posted == 0  # so no history left the device


def test_a_hung_service_is_skipped_for_the_cooldown_then_probed_once() -> None:
    """Every node of a process would otherwise pay (retries + 1) x timeout_s against a service that hangs."""
    with silent_server() as (url, connections):
        first = CloudClient(url, k=2, timeout_s=0.3, retries=1, cooldown_s=1.0)
        with pytest.raises(CloudUnavailableError, match="after 2 attempts"):
            first.candidates([np.array([1, 2])])
        assert len(connections) == 2 and first.posted == 1  # two attempts at one history
        started = time.monotonic()
        skipping = CloudClient(url, k=2, timeout_s=5.0, retries=1, cooldown_s=1.0)
        with pytest.raises(
            CloudUnavailableError, match=r"skipped: it failed here \(this process or this node\)"
        ):
            skipping.candidates([np.array([3])])
        assert time.monotonic() - started < 2.0 and len(connections) == 2  # no attempt (one would take 5 s)
        assert skipping.posted == 0
        cache = ListCache()  # a cache asking through a skipping client: a fallback, and nothing sent
        cache.fetch(CloudClient(url, k=2, timeout_s=5.0, retries=1, cooldown_s=1.0), [1], [np.array([3])])
        assert (cache.fallbacks, cache.sent) == (1, 0)
        time.sleep(1.0)
        with pytest.raises(CloudUnavailableError, match="after 1 attempts"):  # a probe, without retries
            CloudClient(url, k=2, timeout_s=0.3, retries=1, cooldown_s=1.0).candidates([np.array([3])])
        assert len(connections) == 3
        # a client without a cooldown neither skips nor is skipped
        with pytest.raises(CloudUnavailableError, match="after 2 attempts"):
            CloudClient(url, k=2, timeout_s=0.3, retries=1).candidates([np.array([3])])
        assert len(connections) == 5


def test_an_outage_outlives_the_process_in_the_node_state_but_not_a_later_answer() -> None:
    """In deployment each message runs in a new process: the node's state carries the outage, in wall time."""
    with silent_server() as (url, connections):
        with pytest.raises(CloudUnavailableError, match="after 1 attempts"):
            CloudClient(url, k=2, timeout_s=0.3, retries=0, cooldown_s=60.0).candidates([np.array([1, 2])])
        kept = OUTAGES.to_record()
        OUTAGES.clear()  # the process ends; the next message's starts afresh
        OUTAGES.restore(kept)
        with pytest.raises(CloudUnavailableError, match=r"skipped: .* tried again in (59|60) s"):
            CloudClient(url, k=2, timeout_s=5.0, retries=0, cooldown_s=60.0).candidates([np.array([3])])
        assert len(connections) == 1
    listed = b'{"lists": [{"items": [4, 5], "scores": [-1.0, -2.0]}], "model": "m"}'
    with answering_server(listed) as url:
        OUTAGES.clear()
        CloudClient(url, k=2, retries=0, cooldown_s=60.0).candidates([np.array([1, 2])])
        OUTAGES.restore({url: [time.time() - 1.0, 60.0]})  # a node's record of an outage before that answer
        assert OUTAGES.skip_until(url) is None
    OUTAGES.clear()
    OUTAGES.restore({url: [time.time() + 3600.0, 60.0]})  # the clock was set back an hour since the failure
    assert (
        OUTAGES.skip_until(url) <= time.monotonic() + 60.0
    )  # skipped for the cooldown, not for an hour more


def test_a_service_that_answers_its_probe_is_trusted_again() -> None:
    listed = b'{"lists": [{"items": [4, 5], "scores": [-1.0, -2.0]}], "model": "m"}'
    with answering_server((503, b"{}"), listed) as url:
        with pytest.raises(CloudUnavailableError, match="HTTP 503"):
            CloudClient(url, k=2, retries=0, cooldown_s=0.3).candidates([np.array([1, 2])])
        assert OUTAGES.skip_until(url) is not None
        time.sleep(0.3)
        items, _ = CloudClient(url, k=2, retries=0, cooldown_s=0.3).candidates([np.array([1, 2])])
        assert items.tolist() == [[4, 5]] and OUTAGES.skip_until(url) is None


def test_a_list_is_asked_for_once_however_many_rows_share_its_key() -> None:
    """With lag >= 1 several training examples of a user share the capped cloud view: one request row, one
    fallback when the cloud is down."""
    history = np.array([1, 2, 3])
    with answering_server(b'{"lists": [{"items": [4, 5], "scores": [-1.0, -2.0]}], "model": "m"}') as url:
        lists = ListCache().fetch(CloudClient(url, k=2, retries=0), [7, 7], [history, history])
    assert not lists.missing.any() and lists.items.tolist() == [[4, 5], [4, 5]]  # one list for two rows
    cache = ListCache()
    lists = cache.fetch(CloudClient(f"http://127.0.0.1:{free_port()}", k=2, retries=0), [7, 7], [history] * 2)
    assert lists.missing.all() and cache.fallbacks == 1


def test_the_chunks_answered_before_a_failure_are_kept() -> None:
    """An edge box of more than MAX_BATCH users: a failed second request costs its own rows only."""
    first = {"lists": [{"items": [4, 5], "scores": [-1.0, -2.0]}] * MAX_BATCH, "model": "m"}
    with answering_server(json.dumps(first).encode(), (503, b"{}")) as url:
        cache = ListCache()
        users = list(range(MAX_BATCH + 3))
        lists = cache.fetch(CloudClient(url, k=2, retries=0), users, [np.array([1, 2])] * len(users))
    assert not lists.missing[:MAX_BATCH].any() and lists.missing[MAX_BATCH:].all()
    assert cache.fallbacks == 3 and len(cache.lists) == MAX_BATCH
    assert cache.sent == MAX_BATCH + 3  # the refused request's histories were sent too


def test_a_health_page_that_fails_fails_the_attempt_instead_of_skipping_the_catalogue_check() -> None:
    """A proxy's 502 page is no word about the catalogue: trusting it would accept another LLM's lists."""
    listed = b'{"lists": [{"items": [4, 5], "scores": [-1.0, -2.0]}], "model": "m"}'
    with answering_server(listed, health=(502, b"<html>bad gateway</html>")) as url:
        client = CloudClient(url, k=2, retries=0, catalogue=(40, "0123456789abcdef"))
        with pytest.raises(CloudUnavailableError, match="/healthz answered HTTP 502"):
            client.candidates([np.array([1, 2, 3])])
        assert not client.catalogue_checked


def test_cloud_client_retries_a_rate_limit_and_gets_the_list() -> None:
    listed = b'{"lists": [{"items": [4, 5], "scores": [-1.0, -2.0]}], "model": "m"}'
    with answering_server((429, b'{"error": "slow down"}'), (408, b"{}"), listed) as url:
        items, _ = CloudClient(url, k=2, timeout_s=2.0, retries=2).candidates([np.array([1, 2, 3])])
    assert items.tolist() == [[4, 5]]


def test_cloud_client_excludes_a_long_historys_older_items(service: str) -> None:
    """Only the newest MAX_HISTORY items fit a request's history; the older ones go as exclusions."""
    newest = np.tile(np.arange(11, 41), MAX_HISTORY // 30 + 1)[-MAX_HISTORY:]  # items 11..40
    history = np.concatenate([np.arange(1, 6), newest])  # items 1..5 only before the newest MAX_HISTORY
    items, _ = CloudClient(service, k=10).candidates([history])
    assert set(items[0][items[0] > 0].tolist()) == {6, 7, 8, 9, 10}  # the only items never consumed
