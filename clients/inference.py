"""Collaborative inference on the device: SRM rerank of the cloud's list, fusion, disagreement, request gate.

The device holds a candidate list the cloud made from its stale view of the user (DESIGN.md section 2); the SRM
scores that list with the fresh device history; the fused ranking is served; when the request signal (the
SRM's drift since the list was made, its confidence in the next item, or a disagreement of the LLM's and the
SRM's orders of the list, such as the paper's consistency) exceeds the fleet threshold tau, the device requests a fresh
list (:func:`gate`). Here both lists are evaluated
for every user, and binned by every signal asked for, so that one pass yields every request policy's curve
(``lsc4rec.outcomes``) and the fleet can choose its signal: evaluation fetches every user's fresh list (the
device view goes to the cloud whatever the gate decides; README, privacy), unless the run says
``federation.fresh_lists = gated``, where only the users the live gate sends ask for one.
Shape letters: B users, T history length, K candidates, A alphas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from clients.srm import SequentialRecommender
from lsc4rec.config import CATALOGUE_SIGNALS
from lsc4rec.data.batching import left_pad
from lsc4rec.metrics import ndcg_per_user
from lsc4rec.outcomes import (
    CUTOFF,
    LLM_ONLY,
    SRM_ONLY,
    StageOutcome,
    requested_share,
    signal_bin_edges,
    signal_bins,
)
from lsc4rec.ranking import disagreement, fuse, scored_list_ranks, top_certainty, topk_drift
from lsc4rec.scoring import catalogue_scores


class ScoredList(NamedTuple):
    """A candidate list as the device ranks it: items [B, K] (0 = padding), the LLM's and the SRM's scores."""

    items: torch.Tensor
    llm: torch.Tensor
    srm: torch.Tensor


def drop_seen(
    items: torch.Tensor, scores: torch.Tensor, histories: Sequence[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad out (item 0, score ``-inf``) the list items [B, K] already in each device history, keeping order.

    A list made from the cloud's stale view may hold items the user has since consumed on the device; they
    are not recommendable. Slots are padded in place rather than compacted, so positions stay comparable.
    """
    seen = torch.stack(
        [
            torch.isin(row, torch.as_tensor(np.asarray(h, dtype=np.int64)))
            for row, h in zip(items, histories, strict=True)
        ]
    )  # [B, K]
    return items.masked_fill(seen, 0), scores.masked_fill(seen, -torch.inf)


def _eval_batches(
    model: SequentialRecommender, rows: int, batch: Callable[[slice], torch.Tensor], batch_size: int = 512
) -> list[torch.Tensor]:
    """``batch`` of consecutive slices of ``rows`` rows, with the model in eval mode (no dropout), no autograd.

    The model's previous mode is restored afterwards: the device trains the same copy between evaluations.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return [batch(slice(start, start + batch_size)) for start in range(0, rows, batch_size)]
    finally:
        model.train(was_training)


def srm_list_scores(
    model: SequentialRecommender,
    histories: Sequence[np.ndarray],
    items: torch.Tensor,
    max_len: int,
    batch_size: int = 512,
) -> torch.Tensor:
    """SRM scores [B, K] of the list ``items`` [B, K] given each device history, ``-inf`` at padding (item 0)."""

    def batch(rows: slice) -> torch.Tensor:
        scores = model.score(left_pad(histories[rows], max_len), items[rows])
        return scores.float().masked_fill(items[rows] == 0, -torch.inf)

    chunks = _eval_batches(model, len(histories), batch, batch_size)
    return torch.cat(chunks) if chunks else items.new_empty(items.shape, dtype=torch.float32)


def _drift(now: torch.Tensor, before: torch.Tensor, k: int) -> torch.Tensor:
    """The request signal ``drift`` [B] in [0, 1]: how far the newest interactions moved the SRM's own top-k.

    The device's list was made from the cloud view; the interactions since then are what the list cannot know.
    The SRM ranks the catalogue twice, from the device view (``now``) and from the cloud view (``before``),
    both without the items the user has now consumed, and :func:`lsc4rec.ranking.topk_drift` measures how new
    the fresh top-k is. A large drift means the user moved on since the list was made, so a fresh list is
    likely to hold the next item. It had Beauty's largest validation gains with the early, weaker SRMs; with
    today's, the LLM-vs-SRM orders of the list beat it on Beauty's test users, and ``confidence`` beats them
    all (BENCHMARKS.md, "Request signals" and "Beauty on the current code").
    """
    return topk_drift(now, before.masked_fill(torch.isinf(now), -torch.inf), k)


def _confidence(now: torch.Tensor) -> torch.Tensor:
    """The request signal ``confidence`` [B] in [0, 1]: how sure the SRM is of its own top item, device view.

    A fresh list helps only a user whose next item can be read from the newest interactions, the ones the
    stale list was made without: a user in a predictable run (the next film of a series, the next title of a
    director) rather than one the SRM cannot read, whom no list serves well. How sure the SRM is of the next
    item over the whole catalogue (history excluded; :func:`lsc4rec.ranking.top_certainty`) is the device's
    label-free estimate of that. It was the best of the label-free candidates tried on one MovieLens run's
    validation users, where the order signals and drift had lost to random requests on test
    (BENCHMARKS.md, "A fifth request signal").
    """
    return top_certainty(now)


def catalogue_signals(
    model: SequentialRecommender,
    histories: Sequence[np.ndarray],
    cloud_histories: Sequence[np.ndarray],
    names: Sequence[str],
    k: int,
    max_len: int,
) -> dict[str, torch.Tensor]:
    """The catalogue request signals ``names`` (of :data:`CATALOGUE_SIGNALS`) [B] each, ``k`` for drift.

    The device view's catalogue scores are computed once per batch and shared by every signal; the cloud
    view's only when ``drift`` is asked for.
    """
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of signal names, such as ({names!r},), not a string.")
    unknown = set(names) - set(CATALOGUE_SIGNALS)
    if unknown:
        raise ValueError(f"unknown catalogue signals {sorted(unknown)}; known: {CATALOGUE_SIGNALS}.")
    if not names:
        return {}

    def batch(rows: slice) -> torch.Tensor:  # [b, len(names)]
        now = catalogue_scores(model, histories[rows], max_len)
        before = catalogue_scores(model, cloud_histories[rows], max_len) if "drift" in names else None
        columns = []
        for name in names:
            if name == "drift":
                columns.append(_drift(now, before, k))
            elif name == "confidence":
                columns.append(_confidence(now))
        return torch.stack(columns, dim=1)

    chunks = _eval_batches(model, len(histories), batch)
    signals = torch.cat(chunks) if chunks else torch.zeros(0, len(names), dtype=torch.float64)
    return {name: signals[:, column] for column, name in enumerate(names)}


def gate(scores: np.ndarray, tau: float, bin_edges: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Request mask [B]: which devices ask the cloud for a fresh list, given their request signal ``scores``.

    The server sets tau from binned histograms, taking each bin's users as spread uniformly inside it
    (:func:`lsc4rec.outcomes.threshold_for_budget`). Real scores cluster: an order signal takes a few values
    only, so a plain ``score > tau`` puts a whole cluster on one side of tau, and the fleet's rate misses the
    budget by that cluster's share. So the gate follows the calibration's model instead: a device whose score
    lies in a bin wholly above tau requests, one in tau's own bin requests with the share of that bin above tau
    (a coin flip from ``rng``), the rest do not. It is the gated policy the report evaluates
    (:func:`lsc4rec.outcomes.gated_policy`), and its expected rate is the one tau was calibrated for.
    """
    chance = requested_share(bin_edges, tau)[signal_bins(scores, bin_edges)]  # [B]
    return rng.random(chance.shape) < chance


def seeded_gate(scores: np.ndarray, tau: float, bins: int, seed: int) -> np.ndarray:
    """:func:`gate` on ``bins`` equal bins, its coin flips seeded by ``seed``: the same users for the same call.

    The node's gate wherever it runs: before the fresh lists are fetched (``federation.fresh_lists = gated``,
    whose mask is then counted) or, where every user fetched, when the requests are counted (``all``).
    """
    return gate(scores, tau, signal_bin_edges(bins), np.random.default_rng(seed))


def served_list(
    model: SequentialRecommender,
    histories: Sequence[np.ndarray],
    items: torch.Tensor,
    llm_scores: torch.Tensor,
    max_len: int,
) -> ScoredList:
    """A cloud list [B, K] as the device serves it: consumed items dropped (:func:`drop_seen`), SRM-scored."""
    items, llm_scores = drop_seen(items, llm_scores, histories)
    return ScoredList(items, llm_scores, srm_list_scores(model, histories, items, max_len))


def request_signals(
    model: SequentialRecommender,
    histories: Sequence[np.ndarray],
    cloud_histories: Sequence[np.ndarray],
    stale: ScoredList,
    measures: Sequence[str],
    max_len: int,
) -> dict[str, np.ndarray]:
    """Each request signal in ``measures`` [B], in [0, 1], for the stale list the device holds; no label is read.

    Catalogue signals (:func:`catalogue_signals`, ``k`` = the list's length) score the SRM alone; order
    signals compare the LLM's and the SRM's orders of the ``stale`` list (:func:`lsc4rec.ranking.disagreement`).
    """
    wanted = [m for m in measures if m in CATALOGUE_SIGNALS]
    catalogue = catalogue_signals(model, histories, cloud_histories, wanted, stale.items.shape[1], max_len)
    return {
        m: (catalogue[m] if m in catalogue else disagreement(stale.llm, stale.srm, m)).numpy()
        for m in measures
    }


def held_list_signal(
    model: SequentialRecommender,
    histories: Sequence[np.ndarray],
    cloud_histories: Sequence[np.ndarray],
    items: torch.Tensor,
    llm_scores: torch.Tensor,
    measure: str,
    max_len: int,
) -> np.ndarray:
    """The request signal ``measure`` [B] of the cloud list ``items`` [B, K] the device holds, label-free.

    What a device reads before it decides whether to ask for a fresh list: the held list as it serves it
    (:func:`served_list`), then :func:`request_signals`.
    """
    held = served_list(model, histories, items, llm_scores, max_len)
    return request_signals(model, histories, cloud_histories, held, (measure,), max_len)[measure]


def collaborative_inference(
    model: SequentialRecommender,
    histories: Sequence[np.ndarray],
    cloud_histories: Sequence[np.ndarray],
    stale_items: torch.Tensor,
    stale_scores: torch.Tensor,
    fresh_items: torch.Tensor,
    fresh_scores: torch.Tensor,
    targets: np.ndarray,
    alphas: Sequence[float],
    bins: int = 50,
    measures: Sequence[str] = ("drift",),
    max_len: int = 50,
    tau: float = 1.0,
    live: str | None = None,
    norm: str = "minmax",
    seed: int = 0,
    gate_bins: int | None = None,
    asked: np.ndarray | None = None,
    live_signal: np.ndarray | None = None,
) -> dict[str, StageOutcome]:
    """Evaluate fused ranking with the stale and the fresh list for every user and alpha, binned by each signal.

    Parameters
    ----------
    histories
        Device views (fresh histories), one per user.
    cloud_histories
        Cloud views (what the stale list was made from), one per user; the ``drift`` signal compares them.
    stale_items, stale_scores
        [B, K] the list the cloud made from its stale view, with the LLM's scores (``-inf`` at padding).
    fresh_items, fresh_scores
        [B, K] the list a request would bring (made from the device view); with ``federation.fresh_lists =
        gated`` the node passes it for the users its live gate sent only, and the stale list for the rest.
    targets
        [B] the next item of each user; a target outside a list is a miss (ranking is over the list).
    alphas
        The A fusion weights to evaluate, from 0 (SRM-only) to 1 (LLM-only).
    bins, measures
        The histogram (equal bins over [0, 1]) and the request signals to bin by: ``"drift"``
        (over the list length K) or ``"confidence"`` (both :func:`catalogue_signals`), or an order
        measure of :func:`lsc4rec.ranking.disagreement`.
    tau, live, seed, gate_bins
        The live gate: ``requests`` counts the users :func:`gate` sends to the cloud by their ``live`` signal
        (default: the first), its coin flips seeded by ``seed``, with the edges of the ``gate_bins`` bins tau was
        calibrated on (default: ``bins``).
    asked
        [B] the users who did ask, where the node drew its gate before fetching (``federation.fresh_lists =
        gated``): ``requests`` counts them instead of drawing the gate again.
    live_signal
        [B] the ``live`` signal as the node read it to draw that gate (:func:`held_list_signal`, the same
        computation): binned as it is instead of computed again.
    norm
        How both models' scores are normalised before fusion (:func:`lsc4rec.ranking.normalize`).

    Returns
    -------
    dict[str, StageOutcome]
        One outcome per signal: sums over the B users (the same rankings, split by that signal's bins; only
        the live signal's counts requests). Seen items are dropped from both lists first.
    """
    if (alphas[SRM_ONLY], alphas[LLM_ONLY]) != (0.0, 1.0):
        raise ValueError(
            f"alphas must run from 0 (SRM-only) to 1 (LLM-only), got {tuple(alphas)}: the margins of fused over "
            "both are summed against those ends."
        )
    live = live or measures[0]
    if live not in measures:
        raise ValueError(
            f"the live signal {live!r} must be one of the measures evaluated, {tuple(measures)}."
        )
    targets = np.asarray(targets, dtype=np.int64)
    edges = signal_bin_edges(bins)  # [bins + 1]
    lists = {
        "stale": served_list(model, histories, stale_items, stale_scores, max_len),
        "fresh": served_list(model, histories, fresh_items, fresh_scores, max_len),
    }
    ranks = {  # [A, B] rank of each user's target in the fused ranking of each list
        name: np.stack([scored_list_ranks(fuse(llm, srm, a, norm), items, targets).numpy() for a in alphas])
        for name, (items, llm, srm) in lists.items()
    }
    per_user = {name: ndcg_per_user(by_alpha, CUTOFF) for name, by_alpha in ranks.items()}  # [A, B]
    sums = {}
    for name, by_alpha in ranks.items():  # [A] each
        sums[f"{name}_ndcg"] = per_user[name].sum(axis=1)
        sums[f"{name}_hr"] = (by_alpha < CUTOFF).sum(axis=1).astype(np.float64)
    sums["gain_sq"] = ((per_user["fresh"] - per_user["stale"]) ** 2).sum(axis=1)  # [A]
    sums["pair_sq_first"] = ((per_user["stale"] - per_user["stale"][SRM_ONLY]) ** 2).sum(axis=1)  # [A]
    sums["pair_sq_last"] = ((per_user["stale"] - per_user["stale"][LLM_ONLY]) ** 2).sum(axis=1)  # [A]
    recall = {
        name: float(np.isfinite(scored_list_ranks(llm, items, targets).numpy()).sum())
        for name, (items, llm, _) in lists.items()
    }
    known = {} if live_signal is None else {live: live_signal}
    others = [m for m in measures if m not in known]
    computed = request_signals(model, histories, cloud_histories, lists["stale"], others, max_len)
    signals = {m: known[m] if m in known else computed[m] for m in measures}
    outcomes = {}
    for measure, score in signals.items():
        bin_of = signal_bins(score, edges)  # [B]
        by_bin = {  # [A, bins]
            name: np.stack([np.bincount(bin_of, weights=g, minlength=bins) for g in ndcg])
            for name, ndcg in per_user.items()
        }
        if measure != live:
            requests = 0
        elif asked is not None:
            requests = int(asked.sum())
        else:
            requests = int(seeded_gate(score, tau, gate_bins or bins, seed).sum())
        outcomes[measure] = StageOutcome(
            alphas=tuple(float(a) for a in alphas),
            bin_edges=edges,
            users=len(targets),
            stale_recall=recall["stale"],
            fresh_recall=recall["fresh"],
            bin_count=np.bincount(bin_of, minlength=bins).astype(float),
            bin_stale_ndcg=by_bin["stale"],
            bin_fresh_ndcg=by_bin["fresh"],
            requests=requests,
            **sums,
        )
    return outcomes
