"""A strategy wrapper that calibrates the fleet's request threshold tau (and picks its signal) to a budget.

Each cloud request costs LLM compute, so the fleet's request rate is a budget (e.g. 5 % of users). Devices
request when their request signal (``federation.measure``, a score in [0, 1]) exceeds tau. Every evaluate
round the nodes report their collaborative-inference outcomes (``lsc4rec.outcomes``): sums binned by each
signal they evaluated, and how many requests the current tau caused. The server adds them up over the last
few evaluate rounds, sets tau so that the expected rate on the test-time (live, label-free) histogram meets the
budget, and sends it with the next round (DESIGN.md section 6); this replaces the paper's manual two-pass
calibration. When the nodes evaluate several signals (``federation.measure = "auto"``), the server first picks
the one whose gate beats random requests by most on the validation outcomes
(:func:`lsc4rec.outcomes.choose_measure`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any, NamedTuple

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from lsc4rec import records
from lsc4rec.outcomes import StageOutcome, choose_measure, signal_bin_edges, threshold_for_budget
from strategies.wrapper import StrategyWrapper

# given the node ids an evaluate round sampled, the model sent and the live signal: the sample's histogram of
# that signal under that model, or None when it could not be had (``RequestBudget``'s ``sample_counts``)
SampleCounts = Callable[[list[int], ArrayRecord, str], "np.ndarray | None"]


class _Reported(NamedTuple):
    """What one evaluate round adds to the window: its validation outcomes and its label-free test histograms."""

    valid: dict[str, StageOutcome]  # by signal; empty when no node reported validation
    counts: dict[str, np.ndarray]  # by signal: [bins] users per bin of the signal over the test-time lists


class RequestBudget(StrategyWrapper):
    """Keep the fleet's request rate at ``budget`` by calibrating tau on the merged histograms.

    Parameters
    ----------
    strategy
        The wrapped strategy (SRM aggregation); its metrics pass through, with the budget's keys overwritten
        by fleet sums (the inner FedAvg would report example-weighted means of counts).
    budget
        Target share of users that request a fresh list per evaluation, in [0, 1].
    bins
        Equal-width bins over [0, 1] of the nodes' histograms; replies of another length are skipped (in the
        ServerApp the evaluation's sum meets them first, and the run ends naming the mismatch).
    measures
        The request signals the nodes evaluate; with more than one, the window's validation picks the live one.
    initial_tau, initial_measure
        Tau and signal before the first calibration; tau 1.0 = no requests until the fleet has reported.
    window
        How many evaluate rounds, the newest last, tau and the signal are calibrated on. One round's sample can
        be small: the default run evaluates 61 users a round, so a 5 % budget's quantile rests on 3 of them.
        Pooling rounds steadies it, while older rounds describe an SRM that has trained since (BENCHMARKS.md,
        "The live gate's window"). Each round keeps only what calibration reads: validation's outcomes and
        the test-time histograms, which need no label.
    initial_window
        A window saved by :meth:`window_state` (a round's checkpoint): a resumed run calibrates on the rounds
        the uninterrupted run would have.
    sample_counts
        Optional: given the node ids an evaluate round sampled, the model sent and the live signal, the
        sample's label-free histogram of that signal under that model (``bins`` bins), or ``None`` when it
        could not be had. When given, each round's tau is calibrated on its own sample before the messages go,
        and the window's tau only stands in when the histogram cannot be had. For a fleet whose gate decides
        what reaches the cloud (``federation.fresh_lists = gated``): the window's tau describes a model a
        round or more old, and let through 0 to 36 % of a round's sample at a 5 % budget on the default run
        with ``confidence`` named.
    margin_se
        The α each signal's gate is read at when the signal is chosen: validation's best, held to this many
        paired standard errors over the better single model (:meth:`lsc4rec.outcomes.StageOutcome.chosen_alpha`;
        ``federation.alpha_margin_se``, required so that the fleet's rule cannot be left out by accident).

    Attributes
    ----------
    tau, measure
        The threshold and signal sent with the next messages (with ``sample_counts``, the threshold is first
        calibrated again on the next round's sample).
    measures_used
        The signal each evaluate round's gate read (its realized rate is the round's ``records.REALIZED_RATE``).
    calibration_users, calibration_rounds
        How many users' histograms the window's tau was calibrated on, from how many evaluate rounds (0 before
        the first calibration), logged each round: with few users the budget's quantile is a rough estimate,
        so the next round's realized rate can stray from the budget. The final evaluation's gate is calibrated
        afresh on every node, under the final model (``server/app.py``).
    """

    def __init__(
        self,
        strategy: Strategy,
        budget: float,
        bins: int = 50,
        measures: Sequence[str] = ("drift",),
        initial_tau: float = 1.0,
        initial_measure: str | None = None,
        window: int = 1,
        initial_window: Sequence[Mapping[str, Any]] = (),
        sample_counts: SampleCounts | None = None,
        *,
        margin_se: float,
    ) -> None:
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"budget must be in [0, 1], got {budget!r}. It is a share of users.")
        if bins < 1 or window < 1:
            raise ValueError(f"bins and window must be >= 1, got {bins!r} and {window!r}.")
        if not measures or (initial_measure is not None and initial_measure not in measures):
            raise ValueError(
                f"initial_measure {initial_measure!r} must be one of measures {tuple(measures)}."
            )
        super().__init__(strategy)
        self.budget = budget
        self.bin_edges = signal_bin_edges(bins)  # [bins + 1], as the nodes bin
        self.measures = tuple(measures)
        self.tau = initial_tau
        self.measure = initial_measure or self.measures[0]
        self.measures_used: dict[int, str] = {}
        self.calibration_users = 0
        self.calibration_rounds = 0
        self.sample_counts = sample_counts
        self.margin_se = margin_se
        self._recent: deque[_Reported] = deque(
            (self._restored(saved) for saved in initial_window), maxlen=window
        )

    def summary(self) -> None:
        """Log the budget's settings, then the inner strategy's."""
        log(
            INFO,
            "\t├──> Request budget: %.3f, %d bins, window %d rounds, tau %.4f, signal %s (of %s)",
            self.budget,
            len(self.bin_edges) - 1,
            self._recent.maxlen,
            self.tau,
            self.measure,
            ", ".join(self.measures),
        )
        self.strategy.summary()

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the current gate with every evaluation message: the nodes gate their requests with it.

        With ``sample_counts`` the gate is first calibrated on the sampled nodes under ``arrays``. Training
        messages go without it: local training reads the lists the device holds, never the gate.
        """
        config[records.TAU] = self.tau
        config[records.MEASURE] = self.measure
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        if self.sample_counts is None or not messages:
            return messages
        nodes = [message.metadata.dst_node_id for message in messages]
        counts = self.sample_counts(nodes, arrays, self.measure)
        if counts is None or counts.sum() <= 0:
            log(WARNING, "request budget: round %d gates with the window's tau %.4f", server_round, self.tau)
            return messages
        self.tau = threshold_for_budget(counts, self.bin_edges, self.budget)
        for message in messages:  # the inner strategy may have built one config per message
            message.content[records.CONFIG][records.TAU] = self.tau
        log(
            INFO,
            "request budget: round %d, %s tau %.4f calibrated on the %d users of its sample",
            server_round,
            self.measure,
            self.tau,
            int(counts.sum()),
        )
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Delegate; merge the outcomes by addition, pool the window's, recalibrate the gate, report the rate.

        A reply holding a sum that is not finite and >= 0 is left out of both, with a warning: one NaN in a
        histogram left the gate's threshold search with nothing to find, and ended the run.
        """
        replies = [reply for reply in replies if _sound(reply)]
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        merged, requests, users = self._merge(replies)
        if "test" not in merged:
            return metrics
        counts = {m: outcome.bin_count for m, outcome in merged["test"].items()}
        self._recent.append(_Reported(merged.get("valid", {}), counts))
        used_tau, used_measure = self.tau, self.measure
        valid = [r.valid for r in self._recent if r.valid]
        if len(self.measures) > 1 and valid:
            pooled = {m: StageOutcome.sum(v[m] for v in valid) for m in self.measures}
            self.measure = choose_measure(pooled, self.budget, self.margin_se)
        pooled_counts = np.sum([r.counts[self.measure] for r in self._recent], axis=0)
        self.tau = threshold_for_budget(pooled_counts, self.bin_edges, self.budget)
        self.calibration_users = int(pooled_counts.sum())
        self.calibration_rounds = len(self._recent)
        metrics = MetricRecord() if metrics is None else metrics
        metrics[records.REQUESTS] = requests
        metrics[records.USERS] = users
        metrics[records.TAU] = used_tau
        metrics[records.NEXT_TAU] = self.tau
        self.measures_used[server_round] = used_measure
        if users > 0:
            metrics[records.REALIZED_RATE] = requests / users
        log(
            INFO,
            "request budget: round %d, %s tau %.4f -> %s tau %.4f (on %d users of %d rounds), requests %d / %d",
            server_round,
            used_measure,
            used_tau,
            self.measure,
            self.tau,
            self.calibration_users,
            self.calibration_rounds,
            requests,
            users,
        )
        return metrics

    def window_state(self) -> list[dict[str, Any]]:
        """The window as JSON, oldest round first, for a round's checkpoint (``initial_window`` reads it)."""
        return [
            {
                "valid": {
                    key: value
                    for m, outcome in reported.valid.items()
                    for key, value in outcome.to_metrics(records.outcome_prefix("valid", m)).items()
                },
                "counts": {m: counts.tolist() for m, counts in reported.counts.items()},
            }
            for reported in self._recent
        ]

    def _restored(self, saved: Mapping[str, Any]) -> _Reported:
        """One round of a window saved by :meth:`window_state`."""
        valid = (
            {
                m: StageOutcome.from_metrics(saved["valid"], records.outcome_prefix("valid", m))
                for m in self.measures
            }
            if saved["valid"]
            else {}
        )
        return _Reported(valid, {m: np.asarray(saved["counts"][m], dtype=float) for m in self.measures})

    def _merge(self, replies: list[Message]) -> tuple[dict[str, dict[str, StageOutcome]], float, float]:
        """Fleet sums: outcomes by stage and signal, requests and users (no stage when no node reported one)."""
        outcomes: dict[str, dict[str, list[StageOutcome]]] = {}
        requests, users = 0.0, 0.0
        for reply in replies:
            if reply.has_error():
                continue
            for record in reply.content.metric_records.values():
                found = self._outcomes(record, reply.metadata.src_node_id)
                if found is None:
                    continue
                for stage, by_measure in found.items():
                    for measure, outcome in by_measure.items():
                        outcomes.setdefault(stage, {}).setdefault(measure, []).append(outcome)
                requests += float(record.get(records.REQUESTS, 0))
                users += float(found["test"][self.measure].users)
        merged = {
            stage: {m: StageOutcome.sum(parts) for m, parts in by_measure.items()}
            for stage, by_measure in outcomes.items()
        }
        return merged, requests, users

    def _outcomes(self, record: MetricRecord, node: int) -> dict[str, dict[str, StageOutcome]] | None:
        """The record's outcomes by stage and signal; ``None`` (and a warning) unless it holds a usable set."""
        found: dict[str, dict[str, StageOutcome]] = {}
        for stage in ("valid", "test"):
            if len(outcomes := records.stage_outcomes(record, stage, self.measures)) == len(self.measures):
                found[stage] = outcomes
        if "test" not in found:
            return None
        edges = next(iter(found["test"].values())).bin_edges
        if not np.array_equal(edges, self.bin_edges):
            log(
                WARNING,
                "request budget: node %d sent %d bins, expected %d; skipped",
                node,
                len(edges) - 1,
                len(self.bin_edges) - 1,
            )
            return None
        return found


def _sound(reply: Message) -> bool:
    """Whether an evaluation reply's sums may be added (an error reply is: the inner strategy logs it)."""
    if (why := records.unsound_reply(reply)) is None:
        return True
    log(WARNING, "request budget: %s; left out", why)
    return False
