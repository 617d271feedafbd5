"""The candidate service's counters and latency histogram, rendered in the Prometheus text format by hand.

Small enough not to need ``prometheus_client``: requests by status code, histories and items served, errors by
kind, and a cumulative latency histogram.
"""

from __future__ import annotations

import threading
from collections import Counter

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """Thread-safe counters of ``POST /v1/candidates`` (requests are answered on the engine's threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[int] = Counter()  # by HTTP status code
        self.errors: Counter[str] = Counter()  # by kind: llm_cloud.service.STATUS's keys
        self.histories = 0
        self.items = 0
        self.latency_buckets = [0] * len(LATENCY_BUCKETS_S)
        self.latency_sum = 0.0

    def observe(self, status: int, seconds: float) -> None:
        """Count one finished request and its latency."""
        with self._lock:
            self.requests[status] += 1
            self.latency_sum += seconds
            for i, bound in enumerate(LATENCY_BUCKETS_S):
                if seconds <= bound:
                    self.latency_buckets[i] += 1

    def served(self, histories: int, items: int) -> None:
        with self._lock:
            self.histories += histories
            self.items += items

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def render(self) -> str:
        """The Prometheus text exposition (format 0.0.4)."""
        with self._lock:
            total = sum(self.requests.values())
            lines = [
                "# HELP lsc4rec_requests_total Candidate requests by HTTP status.",
                "# TYPE lsc4rec_requests_total counter",
            ]
            lines += [f'lsc4rec_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
            lines += [
                "# HELP lsc4rec_errors_total Failed candidate requests by kind.",
                "# TYPE lsc4rec_errors_total counter",
            ]
            lines += [f'lsc4rec_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.errors.items())]
            lines += [
                "# HELP lsc4rec_histories_total Histories answered.",
                "# TYPE lsc4rec_histories_total counter",
                f"lsc4rec_histories_total {self.histories}",
                "# HELP lsc4rec_items_served_total Candidate items returned.",
                "# TYPE lsc4rec_items_served_total counter",
                f"lsc4rec_items_served_total {self.items}",
                "# HELP lsc4rec_request_latency_seconds Candidate request latency.",
                "# TYPE lsc4rec_request_latency_seconds histogram",
            ]
            lines += [
                f'lsc4rec_request_latency_seconds_bucket{{le="{b}"}} {n}'
                for b, n in zip(LATENCY_BUCKETS_S, self.latency_buckets, strict=True)
            ]
            lines += [
                f'lsc4rec_request_latency_seconds_bucket{{le="+Inf"}} {total}',
                f"lsc4rec_request_latency_seconds_sum {self.latency_sum}",
                f"lsc4rec_request_latency_seconds_count {total}",
            ]
        return "\n".join(lines) + "\n"
