"""What a node reports about collaborative inference, and the request-policy curves computed from it.

A node cannot send per-user results (privacy, size), so it reports sums that merge by addition across nodes:
NDCG@10 / HR@10 of the fused ranking at each fusion weight alpha, with the stale list (the one the device
holds) and with a fresh list (the one a request to the cloud would bring), in total and per bin of the stale
list's request signal (a disagreement of the two orders, or the SRM's drift or confidence). From the merged
sums the server draws, without any second pass over the devices, the NDCG@10 of every request policy against
its request rate: random requests and signal-gated ones (LSC4Rec calibrates its gate by a second manual pass;
DESIGN.md section 6). Shape letters: A alphas, bins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

CUTOFF = 10  # the cut-off of every NDCG / HR summed here
SRM_ONLY, LLM_ONLY = 0, -1  # indices of α 0 and 1: every α grid runs from one to the other (FederationConfig)
_TOTALS = ("stale_ndcg", "stale_hr", "fresh_ndcg", "fresh_hr")  # [A] each
_PAIRED = ("pair_sq_first", "pair_sq_last")  # [A] each; runs before 2026-12-06 lack them
_ARRAYS = (*_TOTALS, "gain_sq", *_PAIRED, "bin_count", "bin_stale_ndcg", "bin_fresh_ndcg")
_SCALARS = ("users", "stale_recall", "fresh_recall", "requests")


@dataclass
class StageOutcome:
    """Sums over one stage's users (validation or test) of one node, or of the merged fleet.

    Attributes
    ----------
    alphas
        The A fusion weights evaluated (1 = LLM-only, 0 = SRM-only).
    bin_edges
        [bins + 1] equal-width edges over [0, 1] of the request signal's histogram.
    users
        Users summed.
    stale_ndcg, stale_hr, fresh_ndcg, fresh_hr
        [A] sums of NDCG@10 / HR@10 of the fused ranking of the stale resp. fresh list.
    gain_sq
        [A] sums of the squared per-user gain (fresh minus stale NDCG@10): with the totals, the spread of
        random requests (:func:`random_spread`).
    pair_sq_first, pair_sq_last
        [A] sums of the squared per-user difference of the stale list's NDCG@10 at each α and at the first
        (resp. last) α of the grid: SRM-only (0) and LLM-only (1) in every run. With the totals, the paired
        standard error of fused's margin over either (:func:`paired_se`); NaN where a run did not record them.
    stale_recall, fresh_recall
        Users whose target is in the stale resp. fresh list (the ceiling of any reranking).
    bin_count
        [bins] users by the request signal of their STALE list: what the device holds when it decides.
    bin_stale_ndcg, bin_fresh_ndcg
        [A, bins] the NDCG@10 sums split by those bins.
    requests
        Users the live gate sent to the cloud (the requests actually made): a signal above tau, or in tau's own
        bin and chosen by its seeded coin flip (``clients.inference.gate``).
    """

    alphas: tuple[float, ...]
    bin_edges: np.ndarray
    users: int
    stale_ndcg: np.ndarray
    stale_hr: np.ndarray
    fresh_ndcg: np.ndarray
    fresh_hr: np.ndarray
    gain_sq: np.ndarray
    pair_sq_first: np.ndarray
    pair_sq_last: np.ndarray
    stale_recall: float
    fresh_recall: float
    bin_count: np.ndarray
    bin_stale_ndcg: np.ndarray
    bin_fresh_ndcg: np.ndarray
    requests: int = 0

    def merge(self, other: StageOutcome) -> StageOutcome:
        """The outcome of both user sets: every sum added; alphas and bins must agree."""
        if tuple(self.alphas) != tuple(other.alphas) or not np.array_equal(self.bin_edges, other.bin_edges):
            raise ValueError(
                f"outcomes must share alphas and bin edges, got {self.alphas} / {len(self.bin_edges) - 1} bins "
                f"and {other.alphas} / {len(other.bin_edges) - 1} bins. Evaluate every node with one config."
            )
        summed = {name: getattr(self, name) + getattr(other, name) for name in (*_ARRAYS, *_SCALARS)}
        return replace(self, **summed)

    @classmethod
    def sum(cls, outcomes: Iterable[StageOutcome]) -> StageOutcome:
        """Merge any number of outcomes (at least one)."""
        outcomes = list(outcomes)
        if not outcomes:
            raise ValueError("outcomes must hold at least one outcome, got none.")
        total = outcomes[0]
        for outcome in outcomes[1:]:
            total = total.merge(outcome)
        return total

    def to_metrics(self, prefix: str) -> dict[str, float | list[float]]:
        """Flat Flower ``MetricRecord`` content: ``f"{prefix}-stale-ndcg"`` etc.; [A, bins] arrays row-major."""
        out: dict[str, float | list[float]] = {
            f"{prefix}-alphas": [float(a) for a in self.alphas],
            f"{prefix}-bin-edges": self.bin_edges.astype(float).tolist(),
        }
        for name in _SCALARS:
            out[_key(prefix, name)] = float(getattr(self, name))
        for name in _ARRAYS:
            out[_key(prefix, name)] = np.asarray(getattr(self, name), dtype=float).ravel().tolist()
        return out

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, object], prefix: str) -> StageOutcome:
        """Inverse of ``to_metrics``; ``metrics`` may hold other keys (other prefixes, ``num-examples``)."""
        alphas = tuple(float(a) for a in metrics[f"{prefix}-alphas"])  # type: ignore[attr-defined]
        edges = np.asarray(metrics[f"{prefix}-bin-edges"], dtype=float)
        shapes = {"bin_count": (len(edges) - 1,)}
        shapes.update({name: (len(alphas),) for name in (*_TOTALS, "gain_sq", *_PAIRED)})
        shapes.update({name: (len(alphas), len(edges) - 1) for name in ("bin_stale_ndcg", "bin_fresh_ndcg")})
        unrecorded = np.full(len(alphas), np.nan)
        values: dict[str, object] = {
            name: np.asarray(
                metrics[_key(prefix, name)]
                if name not in _PAIRED
                else metrics.get(_key(prefix, name), unrecorded),
                dtype=float,
            ).reshape(shapes[name])
            for name in _ARRAYS
        }
        for name in _SCALARS:
            value = float(metrics[_key(prefix, name)])  # type: ignore[arg-type]
            values[name] = round(value) if name in ("users", "requests") else value
        return cls(alphas=alphas, bin_edges=edges, **values)  # type: ignore[arg-type]

    def means(self) -> dict[str, np.ndarray]:
        """Per-alpha means [A] over users: ``stale-ndcg``, ``stale-hr``, ``fresh-ndcg``, ``fresh-hr``."""
        if self.users < 1:
            raise ValueError("means need at least one user, got 0.")
        return {name.replace("_", "-"): getattr(self, name) / self.users for name in _TOTALS}

    def best_alpha(self) -> int:
        """Index of the alpha with the best stale-list NDCG@10 (the first on ties).

        Call it on the VALIDATION outcome only and apply the index to test: choosing on test leaks.
        """
        return int(np.argmax(self.stale_ndcg))

    def best_lead(self) -> tuple[int, int, float, float]:
        """The best α's index, the better single model's, the best's lead over it, and that lead's paired se.

        SRM-only is the better one on a tie; the se is :func:`paired_se`'s, NaN where a run did not record the
        squares it needs.
        """
        best = self.best_alpha()
        single = SRM_ONLY if self.stale_ndcg[SRM_ONLY] >= self.stale_ndcg[LLM_ONLY] else LLM_ONLY
        lead = float(self.stale_ndcg[best] - self.stale_ndcg[single]) / max(self.users, 1)
        return best, single % len(self.alphas), lead, paired_se(self, best, single)

    def chosen_alpha(self, margin_se: float) -> int:
        """Index of the α to serve: the best stale-list NDCG@10 (the first on ties), held to a margin.

        Where the best α blends both models, it must lead the better single model (:meth:`best_lead`) by more
        than ``margin_se`` paired standard errors, else that model is served: on a few hundred users an
        interior best is often noise, and a blend chosen from noise can serve users worse than either model. 0
        takes the best α as it is; so does a run that did not record the squares the standard error needs. Call
        it on the VALIDATION outcome only and apply the index to test: choosing on test leaks.
        """
        best, single, lead, se = self.best_lead()
        if margin_se <= 0 or best == single:
            return best
        return single if lead <= margin_se * se else best  # NaN se: False, the best


def _key(prefix: str, name: str) -> str:
    return f"{prefix}-{name.replace('_', '-')}"


def signal_bin_edges(bins: int) -> np.ndarray:
    """[bins + 1] the equal-width edges over [0, 1] that the nodes bin every request signal by.

    The server and the replays of a run rebuild them from the bin count alone, so all sides must use this.
    """
    return np.linspace(0.0, 1.0, bins + 1)


def signal_bins(scores: np.ndarray, bin_edges: np.ndarray) -> np.ndarray:
    """[B] the bin of each request signal score [B]: ``bin_edges[j] <= score < bin_edges[j + 1]``, 1.0 in the last."""
    bins = len(bin_edges) - 1
    return np.clip(np.searchsorted(bin_edges, np.asarray(scores), side="right") - 1, 0, bins - 1)


def threshold_for_budget(bin_count: np.ndarray, bin_edges: np.ndarray, budget: float) -> float:
    """The threshold tau such that the share of users with a request signal > tau equals ``budget``.

    Users are taken as spread uniformly inside each bin, so the share above tau falls linearly across a bin
    and tau lands between edges. Where several tau give the budget (empty bins), the highest is returned:
    budget 0 gives 1.0 (never request); budget 1 gives ``bin_edges[0] - 1`` (below every score: always).
    With no users, tau is 1.0.
    """
    if not 0.0 <= budget <= 1.0:
        raise ValueError(f"budget must be in [0, 1], got {budget!r}. It is a share of users.")
    counts = np.asarray(bin_count, dtype=float)  # [bins]
    edges = np.asarray(bin_edges, dtype=float)  # [bins + 1]
    if budget >= 1.0:
        return float(edges[0] - 1.0)
    above = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # [bins + 1]: users above edge j
    wanted = budget * above[0]
    j = int(np.flatnonzero(above >= wanted)[-1])  # the highest edge with at least the budget above it
    if j == len(counts):
        return float(edges[-1])
    return float(edges[j] + (above[j] - wanted) / counts[j] * (edges[j + 1] - edges[j]))


def random_policy(outcome: StageOutcome, alpha_index: int, rate: float) -> float:
    """Expected mean NDCG@10 when a random share ``rate`` of users request a fresh list."""
    means = outcome.means()
    return float((1.0 - rate) * means["stale-ndcg"][alpha_index] + rate * means["fresh-ndcg"][alpha_index])


def random_spread(outcome: StageOutcome, alpha_index: int, rate: float) -> float:
    """Standard deviation of the mean NDCG@10 when a random share ``rate`` of users request a fresh list.

    Gated minus random is evidence for the gate only well beyond this: a gate that knows nothing (a random
    signal) lands above random by more than one spread about one time in six. With m = rate * n of the n users
    drawn without replacement, and g the per-user gains (fresh minus stale), whose sum and sum of squares the
    outcome holds: ``sd = sqrt(m (n - m) / (n - 1) * var(g)) / n``.
    """
    n = outcome.users
    if n < 2:
        return 0.0
    mean = (outcome.fresh_ndcg[alpha_index] - outcome.stale_ndcg[alpha_index]) / n
    variance = max(outcome.gain_sq[alpha_index] / n - mean**2, 0.0)
    m = rate * n
    return float(np.sqrt(m * (n - m) / (n - 1) * variance) / n)


def paired_se(outcome: StageOutcome, alpha_index: int, against: int) -> float:
    """Standard error of the mean per-user difference of the stale list's NDCG@10 at two α of the grid.

    ``against`` is ``SRM_ONLY`` (0, the grid's first α) or ``LLM_ONLY`` (-1, its last). The two rankings rank
    the same users, so their difference is paired, and its spread, not either ranking's, says whether one beats
    the other. With d the per-user differences, whose sum and sum of squares the outcome holds:
    ``se = sqrt(var(d) / n)``, ``var`` with n - 1. NaN with fewer than two users, or where the run did not record
    the squares.
    """
    if against not in (SRM_ONLY, LLM_ONLY):
        raise ValueError(f"against must be 0 (SRM-only) or -1 (LLM-only), got {against!r}.")
    n = outcome.users
    squares = outcome.pair_sq_first if against == SRM_ONLY else outcome.pair_sq_last
    if n < 2 or not np.isfinite(squares[alpha_index]):
        return float("nan")
    mean = (outcome.stale_ndcg[alpha_index] - outcome.stale_ndcg[against]) / n
    variance = max(squares[alpha_index] / n - mean**2, 0.0) * n / (n - 1)
    return float(np.sqrt(variance / n))


def requested_share(bin_edges: np.ndarray, tau: float) -> np.ndarray:
    """[bins] the share of each bin's users whose signal exceeds ``tau``, users spread uniformly inside a bin."""
    edges = np.asarray(bin_edges, dtype=float)
    return np.clip((edges[1:] - tau) / np.diff(edges), 0.0, 1.0)


def expected_rate(bin_count: np.ndarray, bin_edges: np.ndarray, tau: float) -> float:
    """The share of the histogram's users the gate at ``tau`` sends to the cloud, in expectation.

    It is what :func:`threshold_for_budget` calibrates, and what the devices' gate realizes on average
    (``clients.inference.gate``). 0 with no users.
    """
    counts = np.asarray(bin_count, dtype=float)
    return float((requested_share(bin_edges, tau) * counts).sum() / max(counts.sum(), 1.0))


def gated_policy(outcome: StageOutcome, alpha_index: int, tau: float) -> tuple[float, float]:
    """(request rate, mean NDCG@10) when users whose stale-list request signal exceeds ``tau`` request.

    The boundary bin requests the share of it above tau, its gain taken as uniform across the bin. The rate is
    what that request set costs. Calibrate ``tau`` on the same stage's histogram (:func:`threshold_for_budget`):
    the signal needs no label, so the fleet calibrates on the lists it holds now, as it does live.
    """
    share = requested_share(outcome.bin_edges, tau)  # [bins]
    gain = outcome.bin_fresh_ndcg[alpha_index] - outcome.bin_stale_ndcg[alpha_index]  # [bins]
    rate = expected_rate(outcome.bin_count, outcome.bin_edges, tau)
    return rate, float((outcome.stale_ndcg[alpha_index] + (share * gain).sum()) / max(outcome.users, 1))


class BudgetPoint(NamedTuple):
    """The gate at one request budget: its label-free τ, the rate it realizes, and NDCG@10 against random."""

    tau: float
    rate: float
    gated: float
    random: float  # random requests at the same realized rate
    spread: float  # the standard deviation of those random requests (random_spread)

    @property
    def gain(self) -> float:
        return self.gated - self.random


def budget_point(outcome: StageOutcome, alpha_index: int, budget: float) -> BudgetPoint:
    """Gated requests at ``budget``, τ calibrated on this outcome's own histogram (the signal reads no label)."""
    tau = threshold_for_budget(outcome.bin_count, outcome.bin_edges, budget)
    rate, gated = gated_policy(outcome, alpha_index, tau)
    return BudgetPoint(
        tau, rate, gated, random_policy(outcome, alpha_index, rate), random_spread(outcome, alpha_index, rate)
    )


def signal_comparison(
    valid: Mapping[str, StageOutcome],
    test: Mapping[str, StageOutcome],
    margin_se: float,
    budgets: Iterable[float] = (0.05, 0.1, 0.2),
) -> list[dict[str, str | float]]:
    """Every signal's gate against random requests at each budget, on validation and on test, one row each.

    ``valid`` and ``test`` map each signal to its outcome (the same users and lists, binned by that signal).
    α is validation's (:meth:`StageOutcome.chosen_alpha` with ``margin_se``), τ each stage's label-free calibration (:func:`budget_point`). Validation is what
    chooses a signal (:func:`choose_measure`); the test columns show how that choice carried over, and how the
    signals not chosen would have fared, for reading only: choosing by them would tune on the test target.
    """
    rows: list[dict[str, str | float]] = []
    for measure, v in valid.items():
        alpha = v.chosen_alpha(margin_se)
        for budget in budgets:
            row: dict[str, str | float] = {"signal": measure, "budget": budget, "alpha": v.alphas[alpha]}
            for stage, outcome in (("valid", v), ("test", test[measure])):
                point = budget_point(outcome, alpha, budget)
                row[f"{stage} rate"] = point.rate
                row[f"{stage} gated"] = point.gated
                row[f"{stage} random"] = point.random
                row[f"{stage} gain"] = point.gain
                row[f"{stage} random sd"] = point.spread
            rows.append(row)
    return rows


def choice_budgets(budget: float) -> tuple[float, ...]:
    """The budgets a signal is chosen at: the fleet's, its double and its quadruple (capped at 1)."""
    return tuple(sorted({min(budget * factor, 1.0) for factor in (1, 2, 4)}))


def choose_measure(valid: Mapping[str, StageOutcome], budget: float, margin_se: float) -> str:
    """The request signal whose gate beats random requests by most around ``budget``, on VALIDATION outcomes.

    ``valid`` maps each signal to its validation outcome (the same users and lists, binned by that signal).
    Which signal predicts the gain of a fresh list depends on the SRM (BENCHMARKS.md), so the fleet picks it
    from its own reports instead of a fixed setting. The gains are summed over :func:`choice_budgets`: at one
    budget a few hundred users' gain is about as large as its noise (:func:`random_spread`), and a signal that
    ranks the whole head of the fleet well, not only the users at one cut, is the one that carries over to
    new users. Each signal's gate is read at the α validation serves (``margin_se``: :meth:`StageOutcome.chosen_alpha`).
    Ties (e.g. budget 0) go to the first signal.
    """
    if not valid:
        raise ValueError("choose_measure needs at least one signal's outcome, got none.")
    gains = {
        m: sum(budget_point(o, o.chosen_alpha(margin_se), b).gain for b in choice_budgets(budget))
        for m, o in valid.items()
    }
    return max(gains, key=lambda m: gains[m])
