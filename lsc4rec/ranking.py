"""Score normalisation, fusion and disagreement between two rankings of the same candidate list.

Conventions: a candidate list is ``items`` [B, K] (item ids, 0 = padding slot) with ``scores`` [B, K]
(``-inf`` at padding). The LLM's scores are log-probabilities (negative, spread over a few nats); the SRM's are
unbounded dot-product logits. Their scales differ per model and per row, so they are normalised per row over
the real slots before they are fused. (The official LSC4Rec code instead adds a score linear in the LLM's list
position to the SRM's sigmoid minus 0.5, with fixed weights; README, "Where this departs from the official code".)
Every function accepts torch tensors or numpy arrays and returns torch tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from lsc4rec.config import CATALOGUE_SIGNALS, MEASURES, NORMALIZATIONS
from lsc4rec.metrics import target_ranks

ArrayLike = torch.Tensor | np.ndarray


def _real(scores: torch.Tensor) -> torch.Tensor:
    """Mask [B, K] of the real slots: finite scores (padding holds ``-inf``)."""
    return torch.isfinite(scores)


def normalize(scores: ArrayLike, method: str = "minmax") -> torch.Tensor:
    """Map each row's real scores [B, K] onto [0, 1] so that two models' scores can be added.

    Parameters
    ----------
    scores
        [B, K] scores, ``-inf`` at padding.
    method
        ``"minmax"`` (default): ``(s - min) / (max - min)``; keeps the score gaps.
        ``"softmax"``: the row's probabilities over the list; sensible for log-probabilities, but saturates
        for peaked SRM logits. ``"rank"``: ``1 - rank / (n - 1)`` (ties share the best rank); discards the
        gaps, robust to outliers.

    Returns
    -------
    torch.Tensor
        [B, K] float64, ``-inf`` at padding. A row whose real scores are all equal (one real item included)
        maps them to one constant (1.0 under minmax and rank, 1/n under softmax), never NaN: such a row
        carries no order, and a constant leaves the fused order to the other model. A NaN or +inf score (a
        broken model's) comes out NaN, normalised around: a ranking then counts it against the target
        (:func:`lsc4rec.metrics.target_ranks`), where dropping it as padding would move the target up.
    """
    raw = torch.as_tensor(scores).double()
    broken = torch.isnan(raw) | torch.isposinf(raw)
    scores = raw.masked_fill(broken, -torch.inf)
    real = _real(scores)
    if method == "minmax":
        lo = scores.masked_fill(~real, torch.inf).amin(dim=1, keepdim=True)
        hi = scores.masked_fill(~real, -torch.inf).amax(dim=1, keepdim=True)
        span = hi - lo
        value = torch.where(span > 0, (scores - lo) / span, torch.ones_like(scores))
    elif method == "softmax":
        value = torch.softmax(scores.masked_fill(~real.any(dim=1, keepdim=True), 0.0), dim=1)
    elif method == "rank":
        better = (scores[:, None, :] > scores[:, :, None]) & real[:, None, :]  # [B, K, K]: j beats i
        n = real.sum(dim=1, keepdim=True)
        value = 1.0 - better.sum(dim=2).double() / (n - 1).clamp(min=1)
    else:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {method!r}.")
    return value.masked_fill(~real, -torch.inf).masked_fill(broken, torch.nan)


def fuse(llm_scores: ArrayLike, srm_scores: ArrayLike, alpha: float, method: str = "minmax") -> torch.Tensor:
    """Final scores [B, K] = ``alpha * norm(llm) + (1 - alpha) * norm(srm)``, ``-inf`` at padding.

    ``alpha = 1`` ranks in the LLM's order, ``alpha = 0`` in the SRM's (DESIGN.md section 5): the other model's
    scores have no say there, not even a broken one. A slot is padding where the LLM's score is ``-inf`` (the
    list's empty and dropped slots; the SRM's are ``-inf`` there too); an SRM's ``-inf`` elsewhere ranks its item
    last. A broken score (NaN, +inf) of a model that has a say makes the fused score NaN, which a ranking counts
    against the target.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
    llm, srm = normalize(llm_scores, method), normalize(srm_scores, method)
    padding = torch.isneginf(llm)
    if alpha == 1.0:
        fused = llm
    elif alpha == 0.0:
        fused = srm
    else:
        fused = alpha * llm + (1.0 - alpha) * srm
    return fused.masked_fill(padding, -torch.inf)


def _ordinal_ranks(
    llm_scores: ArrayLike, srm_scores: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """0-based ranks [B, K] of each slot under both models, and the mask [B, K] of real slots.

    Ties are broken by list position (the LLM's emission order), so ranks are a permutation of 0..n-1 over
    the real slots; padding (non-finite in either model) ranks after them.
    """
    llm, srm = torch.as_tensor(llm_scores).double(), torch.as_tensor(srm_scores).double()
    real = _real(llm) & _real(srm)

    def rank(scores: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(scores.masked_fill(~real, -torch.inf), dim=1, descending=True, stable=True)
        return torch.argsort(order, dim=1, stable=True)

    return rank(llm), rank(srm), real


def rank_displacement(llm_scores: ArrayLike, srm_scores: ArrayLike) -> torch.Tensor:
    """Mean absolute rank displacement of the list's items between the two orders, in [0, 1] [B].

    LSC4Rec's consistency score is ``mean_i |rank_llm(i) - rank_srm(i)|``; here it is divided by its maximum
    over permutations of the row's n real items, ``floor(n^2 / 2) / n`` (the reversal), so that lists of
    different real lengths share one threshold. 0 when n <= 1. Per user: the official code scores batches of
    16 users and adds a penalty for the invalid ids its beam search emits, which item tokens cannot be.
    """
    r_llm, r_srm, real = _ordinal_ranks(llm_scores, srm_scores)
    n = real.sum(dim=1)
    total = ((r_llm - r_srm).abs() * real).sum(dim=1).double()
    return total / (n * n // 2).clamp(min=1)


def kendall_distance(llm_scores: ArrayLike, srm_scores: ArrayLike) -> torch.Tensor:
    """Fraction of the real item pairs the two orders rank differently (Kendall tau distance) [B]; 0 when n < 2."""
    r_llm, r_srm, real = _ordinal_ranks(llm_scores, srm_scores)
    n = real.sum(dim=1)
    pairs = real[:, :, None] & real[:, None, :]  # [B, K, K]
    llm_before = r_llm[:, :, None] < r_llm[:, None, :]
    srm_after = r_srm[:, :, None] > r_srm[:, None, :]
    discordant = (pairs & llm_before & srm_after).sum(dim=(1, 2)).double()
    return discordant / (n * (n - 1) // 2).clamp(min=1)


def topk_overlap_distance(llm_scores: ArrayLike, srm_scores: ArrayLike, k: int = 10) -> torch.Tensor:
    """``1 - |top-k(llm) ∩ top-k(srm)| / k`` [B], with k capped at the row's real length n (0 when n = 0)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}.")
    r_llm, r_srm, real = _ordinal_ranks(llm_scores, srm_scores)
    kept = real.sum(dim=1).clamp(max=k)
    shared = ((r_llm < kept[:, None]) & (r_srm < kept[:, None])).sum(dim=1).double()
    return torch.where(kept > 0, 1.0 - shared / kept.clamp(min=1), 0.0)


def topk_drift(now_scores: ArrayLike, before_scores: ArrayLike, k: int) -> torch.Tensor:
    """How much of the top-k under ``now_scores`` [B, N] is new against the top-k under ``before_scores`` [B, N].

    ``1 - sum_i w_i [item i of the now top-k is in the before top-k] / sum_i w_i``, with DCG weights
    ``w_i = 1 / log2(i + 2)`` so that a changed head counts more than a changed tail; 0 = the same set, 1 =
    disjoint. ``k`` is capped at N. Items at ``-inf`` in ``now_scores`` should be ``-inf`` in both.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}.")
    now, before = torch.as_tensor(now_scores), torch.as_tensor(before_scores)
    k = min(k, now.shape[1])
    now_top, before_top = now.topk(k, dim=1).indices, before.topk(k, dim=1).indices  # [B, k]
    kept = (now_top[:, :, None] == before_top[:, None, :]).any(dim=2).double()  # [B, k]
    weights = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2.0)  # [k]
    return 1.0 - (kept * weights).sum(dim=1) / weights.sum()


def top_certainty(scores: ArrayLike) -> torch.Tensor:
    """How sure a softmax over each row's finite scores [B, N] is of its top item, on [0, 1]: ``log(n p) / log n``.

    The top item's probability p lies in [1/n, 1] for n finite scores: 0 is no preference (uniform), 1 is
    certainty. The log scale keeps the signal spread over [0, 1] whatever the catalogue's size: raw p shrinks
    with n, and for 12,000 items it would put most users in the lowest of the histogram's equal bins, where the
    gate cannot tell users apart. A row with fewer than two finite scores (no choice left) gets 0.
    """
    scores = torch.as_tensor(scores).double()
    real = _real(scores)
    n = real.sum(dim=1).double()
    finite = scores.masked_fill(~real, -torch.inf).masked_fill(~real.any(dim=1, keepdim=True), 0.0)
    probs = torch.softmax(finite, dim=1)
    certainty = torch.log(probs.max(dim=1).values * n) / torch.log(n.clamp(min=2.0))
    return torch.where(n >= 2, certainty.clamp(0.0, 1.0), 0.0)


def disagreement(
    llm_scores: ArrayLike, srm_scores: ArrayLike, measure: str = "displacement", k: int = 10
) -> torch.Tensor:
    """Disagreement [B] in [0, 1] (higher = the SRM reorders the LLM's list more) by ``measure``.

    ``"displacement"`` (after the paper's), ``"kendall"``, or ``"topk"`` (with ``k``). The other request signals,
    ``"drift"`` and ``"confidence"``, need the SRM's catalogue scores rather than the list's, so the device
    computes them itself (``clients.inference.catalogue_signals``).
    """
    if measure == "displacement":
        return rank_displacement(llm_scores, srm_scores)
    if measure == "kendall":
        return kendall_distance(llm_scores, srm_scores)
    if measure == "topk":
        return topk_overlap_distance(llm_scores, srm_scores, k)
    if measure in CATALOGUE_SIGNALS:
        raise ValueError(
            f"{measure} reads the SRM's catalogue scores, not the list's: use topk_drift or top_certainty."
        )
    raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}.")


def scored_list_ranks(scores: ArrayLike, items: ArrayLike, targets: ArrayLike) -> torch.Tensor:
    """Pessimistic 0-based rank [B] (float64) of each target within its scored list; ``inf`` if not in it.

    A target sitting in a slot whose score is ``-inf`` (a padded or dropped slot) counts as absent.
    """
    scores = torch.as_tensor(scores).double()
    items, targets = torch.as_tensor(items).long(), torch.as_tensor(targets).long()
    hits = (items == targets[:, None]) & (items != 0) & _real(scores)  # [B, K]
    index = torch.where(hits.any(dim=1), hits.int().argmax(dim=1), -1)
    return target_ranks(scores, index)
