"""The device's HTTP client of the candidate service: real service on loopback, dead ports, node-state cache."""

from __future__ import annotations

import time

import numpy as np
import pytest

from clients.cloud import CloudClient, ListCache
from llm_cloud.processes import free_port
from lsc4rec.errors import CloudUnavailableError, ProtocolError


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


def test_list_cache_roundtrips_through_node_state() -> None:
    cache = ListCache(
        {
            (3, 4): (np.array([1, 2]), np.array([-0.5, -0.7])),
            (5, 1): (np.array([9, 8]), np.array([0.0, -1.0])),
        },
        fallbacks=2,
    )
    restored = ListCache.from_record(cache.to_record())
    assert restored.fallbacks == 2 and set(restored.lists) == {(3, 4), (5, 1)}
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
    again = cache.fetch(CloudClient(f"http://127.0.0.1:{free_port()}", k=5, retries=0), [0, 1], histories)
    assert np.array_equal(again.items, lists.items) and cache.fallbacks == 0  # cached: no request needed


def test_cloud_client_unknown_item_is_a_protocol_error(service: str) -> None:
    client = CloudClient(service, k=5)
    with pytest.raises(ProtocolError, match="refused it \\(4"):
        client.candidates([np.array([10_000])])
