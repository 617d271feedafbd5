"""A strategy wrapper that calibrates the fleet's request threshold tau to a request budget.

Each cloud request costs LLM compute, so the fleet's request rate is a budget (e.g. 5 % of users). Devices
request when their request signal (``federation.measure``, a score in [0, 1]) exceeds tau. Every evaluate
round the nodes report a fixed-bin histogram of their users' signal scores and how many requests the
current tau caused; the server adds the histograms up, sets tau so that the expected rate meets the budget,
and sends it with the next round (DESIGN.md section 6). This replaces the paper's manual two-pass calibration.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from lsc4rec import records
from lsc4rec.outcomes import threshold_for_budget


class RequestBudget(Strategy):
    """Keep the fleet's request rate at ``budget`` by calibrating tau on the merged histograms.

    Parameters
    ----------
    strategy
        The wrapped strategy (SRM aggregation); its metrics pass through, with the budget's keys overwritten
        by fleet sums (the inner FedAvg would report example-weighted means of counts).
    budget
        Target share of users that request a fresh list per evaluation, in [0, 1].
    bins
        Equal-width bins over [0, 1] of the nodes' histograms; replies of another length are skipped.
    initial_tau
        Tau before the first calibration; 1.0 = no requests until the fleet has reported.

    Attributes
    ----------
    tau
        The threshold sent with the next messages.
    realized_rates
        Fleet request rate by evaluate round, under the tau the nodes used in that round.
    """

    def __init__(self, strategy: Strategy, budget: float, bins: int = 50, initial_tau: float = 1.0) -> None:
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"budget must be in [0, 1], got {budget!r}. It is a share of users.")
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins!r}.")
        self.strategy = strategy
        self.budget = budget
        self.bin_edges = np.linspace(0.0, 1.0, bins + 1)  # [bins + 1], as the nodes bin
        self.tau = initial_tau
        self.realized_rates: dict[int, float] = {}

    def summary(self) -> None:
        """Log the budget's settings, then the inner strategy's."""
        log(
            INFO,
            "\t├──> Request budget: %.3f, %d bins, tau %.4f",
            self.budget,
            len(self.bin_edges) - 1,
            self.tau,
        )
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the current tau with every training message (training data mirrors inference)."""
        config[records.TAU] = self.tau
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Delegate."""
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the current tau with every evaluation message: the nodes gate their requests with it."""
        config[records.TAU] = self.tau
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Delegate, then merge the histograms by addition, recalibrate tau and report the realized rate."""
        replies = list(replies)
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        hist, requests, users = self._merge(replies)
        if hist is None:
            return metrics
        used, self.tau = self.tau, threshold_for_budget(hist, self.bin_edges, self.budget)
        metrics = MetricRecord() if metrics is None else metrics
        metrics[records.HIST] = hist.tolist()
        metrics[records.REQUESTS] = requests
        metrics[records.USERS] = users
        metrics[records.TAU] = used
        metrics[records.NEXT_TAU] = self.tau
        if users > 0:
            self.realized_rates[server_round] = metrics[records.REALIZED_RATE] = requests / users
        log(
            INFO,
            "request budget: round %d, tau %.4f -> %.4f, requests %d / %d",
            server_round,
            used,
            self.tau,
            requests,
            users,
        )
        return metrics

    def _merge(self, replies: list[Message]) -> tuple[np.ndarray | None, float, float]:
        """Fleet sums of the histograms [bins], requests and users (``None`` when no node sent a histogram)."""
        hist, requests, users = None, 0.0, 0.0
        for reply in replies:
            if reply.has_error():
                continue
            for record in reply.content.metric_records.values():
                if records.HIST not in record:
                    continue
                counts = np.asarray(record[records.HIST], dtype=float)
                if counts.shape != (len(self.bin_edges) - 1,):
                    node, expected = reply.metadata.src_node_id, len(self.bin_edges) - 1
                    log(
                        WARNING,
                        "request budget: node %d sent %d bins, expected %d; skipped",
                        node,
                        counts.size,
                        expected,
                    )
                    continue
                hist = counts if hist is None else hist + counts
                requests += float(record.get(records.REQUESTS, 0))
                users += float(record.get(records.USERS, counts.sum()))
        return hist, requests, users
