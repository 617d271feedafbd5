"""Tests of score normalisation, fusion, disagreement measures and list ranks against hand-worked values."""

import itertools
import math

import numpy as np
import pytest
import torch

from lsc4rec.ranking import (
    disagreement,
    fuse,
    kendall_distance,
    normalize,
    rank_displacement,
    scored_list_ranks,
    top_certainty,
    topk_drift,
    topk_overlap_distance,
)

INF = math.inf


def test_normalize_minmax_maps_real_slots_to_unit_interval_and_keeps_padding() -> None:
    out = normalize(torch.tensor([[-1.0, -3.0, -2.0, -INF]]))
    assert torch.allclose(out[0, :3], torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64))
    assert out[0, 3] == -INF


@pytest.mark.parametrize("method", ["minmax", "softmax", "rank"])
def test_normalize_single_item_or_equal_scores_gives_no_nan(method: str) -> None:
    scores = np.array([[2.0, -INF, -INF], [5.0, 5.0, 5.0], [-INF, -INF, -INF]])
    out = normalize(scores, method)
    assert not torch.isnan(out).any()
    assert torch.isfinite(out[0, 0]) and torch.isinf(out[0, 1:]).all()
    assert torch.equal(out[1], out[1, :1].expand(3))
    assert (out[2] == -INF).all()
    if method != "softmax":  # the constant the docstring promises (softmax's is 1/n, a probability)
        assert out[0, 0] == out[1, 0] == 1.0


def test_normalize_softmax_gives_list_probabilities() -> None:
    out = normalize(torch.log(torch.tensor([[0.2, 0.6, 0.2, 0.0]])), "softmax")
    assert torch.allclose(out[0, :3], torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64))


def test_normalize_rank_ties_share_best_rank() -> None:
    out = normalize(torch.tensor([[3.0, 1.0, 3.0, 0.0, -INF]]), "rank")
    assert torch.allclose(out[0, :4], torch.tensor([1.0, 1 / 3, 1.0, 0.0], dtype=torch.float64))


def test_normalize_unknown_method_raises() -> None:
    with pytest.raises(ValueError, match="normalization must be one of"):
        normalize(torch.zeros(1, 2), "zscore")


def test_fuse_alpha_extremes_follow_one_model_order() -> None:
    llm = torch.tensor([[-0.1, -0.5, -2.0, -INF]])
    srm = torch.tensor([[0.0, 3.0, 1.0, -INF]])
    assert torch.argsort(fuse(llm, srm, 1.0)[0, :3], descending=True).tolist() == [0, 1, 2]
    assert torch.argsort(fuse(llm, srm, 0.0)[0, :3], descending=True).tolist() == [1, 2, 0]
    assert fuse(llm, srm, 0.5)[0, 3] == -INF


@pytest.mark.parametrize("method", ["minmax", "softmax", "rank"])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("broken", [math.nan, INF])
def test_a_broken_srm_score_never_moves_the_target_up(method: str, alpha: float, broken: float) -> None:
    """Items [5, 6, 7, 8]: the LLM ranks the target 7 third; the SRM is broken (NaN, +inf) on 5 and 6.

    Those slots were dropped as padding, which ranked the target first at every α, LLM-only included. At α = 1
    the SRM has no say; elsewhere a broken score counts against the target, as over the catalogue.
    """
    items = torch.tensor([[5, 6, 7, 8]])
    llm = torch.tensor([[-0.1, -0.2, -0.3, -0.4]])
    srm = torch.tensor([[broken, broken, 2.0, 1.0]])
    fused = fuse(llm, srm, alpha, method)
    assert scored_list_ranks(fused, items, torch.tensor([7])).item() == 2.0
    assert torch.isnan(normalize(srm, method)[0, :2]).all()  # broken stays broken, the others normalised
    assert torch.isfinite(normalize(srm, method)[0, 2:]).all()


def test_an_srm_minus_inf_ranks_its_item_last_but_is_no_padding() -> None:
    """The SRM may rule an item out: it then ranks last where the SRM has a say, and stays in the LLM's order."""
    items = torch.tensor([[5, 6, 7, 8]])
    llm, srm = torch.tensor([[-0.1, -0.2, -0.3, -0.4]]), torch.tensor([[-INF, 3.0, 2.0, 1.0]])
    assert scored_list_ranks(fuse(llm, srm, 1.0), items, torch.tensor([7])).item() == 2.0
    assert scored_list_ranks(fuse(llm, srm, 0.5), items, torch.tensor([5])).item() == INF  # last: a miss


def test_fuse_half_alpha_averages_minmax_scores() -> None:
    fused = fuse(torch.tensor([[0.0, -1.0, -2.0]]), torch.tensor([[0.0, 4.0, 2.0]]), 0.5)
    # norm(llm) = [1, .5, 0], norm(srm) = [0, 1, .5]
    assert torch.allclose(fused, torch.tensor([[0.5, 0.75, 0.25]], dtype=torch.float64))
    # α weighs the LLM: at 0.5 the weights could be swapped unseen, at 0.25 not
    fused = fuse(torch.tensor([[0.0, -1.0, -2.0]]), torch.tensor([[0.0, 4.0, 2.0]]), 0.25)
    assert torch.allclose(fused, torch.tensor([[0.25, 0.875, 0.375]], dtype=torch.float64))


def brute_displacement(llm: list[float], srm: list[float]) -> float:
    n = len(llm)
    r_llm = np.argsort(np.argsort(-np.asarray(llm), kind="stable"), kind="stable")
    r_srm = np.argsort(np.argsort(-np.asarray(srm), kind="stable"), kind="stable")
    worst = max(sum(abs(i - p) for i, p in enumerate(perm)) for perm in itertools.permutations(range(n)))
    return float(np.abs(r_llm - r_srm).sum() / worst) if worst else 0.0


def test_rank_displacement_matches_brute_force_normalisation() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 5, 6):
        llm, srm = rng.normal(size=n).tolist(), rng.normal(size=n).tolist()
        padded = torch.tensor([[*llm, -INF, -INF]]), torch.tensor([[*srm, -INF, -INF]])
        assert rank_displacement(*padded).item() == pytest.approx(brute_displacement(llm, srm))


def test_rank_displacement_reversed_list_is_one_and_same_order_is_zero() -> None:
    llm = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0], [1.0, -INF, -INF, -INF, -INF]])
    assert torch.allclose(rank_displacement(llm, -llm), torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert (rank_displacement(llm, 2 * llm) == 0).all()


def test_kendall_distance_counts_discordant_pairs() -> None:
    # llm order a > b > c > d; srm order b > a > d > c: 2 of 6 pairs discordant.
    llm = torch.tensor([[4.0, 3.0, 2.0, 1.0, -INF]])
    srm = torch.tensor([[3.0, 4.0, 1.0, 2.0, -INF]])
    assert kendall_distance(llm, srm).item() == pytest.approx(2 / 6)
    assert kendall_distance(llm, -llm).item() == pytest.approx(1.0)
    # a slot the SRM scores -inf is padding to both orders: the pair left, (a, c), is discordant
    assert kendall_distance(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[1.0, -INF, 3.0]])).item() == 1.0


def test_topk_overlap_distance_counts_shared_top_items() -> None:
    llm = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    srm = torch.tensor([[5.0, 1.0, 2.0, 3.0, 4.0]])
    assert topk_overlap_distance(llm, srm, k=2).item() == pytest.approx(0.5)  # {0,1} vs {0,4}
    assert topk_overlap_distance(llm, srm, k=10).item() == 0.0  # k capped at the 5 real items


def test_every_list_distance_is_zero_on_a_row_without_real_items() -> None:
    """A list the history emptied carries no disagreement: no signal may make it look like the worst row."""
    empty = torch.full((1, 4), -INF)
    for distance in (rank_displacement, kendall_distance, topk_overlap_distance):
        assert distance(empty, empty).item() == 0.0, distance.__name__


def test_topk_drift_weights_the_changed_head_more() -> None:
    before = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]] * 3)  # top-3 {0, 1, 2}
    now = torch.tensor(
        [
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # the same top-3
            [0.0, 4.0, 3.0, 2.0, 1.0, 5.0],  # new item 5 at the head: top-3 (5, 1, 2)
            [5.0, 4.0, 0.0, 2.0, 1.0, 3.0],  # new item 5 third: top-3 (0, 1, 5)
        ]
    )
    w = [1.0, 1 / np.log2(3), 0.5]
    drift = topk_drift(now, before, k=3)
    assert drift.tolist() == pytest.approx([0.0, w[0] / sum(w), w[2] / sum(w)])
    assert topk_drift(now, -now, k=3).tolist() == pytest.approx([1.0, 1.0, 1.0])  # disjoint top-3
    assert topk_drift(now, before, k=50)[1].item() == 0.0  # k capped at the catalogue: same set


def test_top_certainty_is_the_top_softmax_probability_on_a_log_scale_from_uniform_to_certain() -> None:
    scores = torch.tensor(
        [
            [2.0, 0.0, -torch.inf],  # two items left: p = e^2 / (e^2 + 1)
            [1.0, 1.0, 1.0],  # uniform: no preference
            [50.0, 0.0, 0.0],  # all but certain
            [-torch.inf, 3.0, -torch.inf],  # one item left: no choice
            [-torch.inf, -torch.inf, -torch.inf],  # nothing left
            [torch.nan, 2.0, 0.0],  # a broken score is no item: the two others decide
        ]
    )
    p = np.exp(2.0) / (np.exp(2.0) + 1.0)
    assert top_certainty(scores).tolist() == pytest.approx(
        [np.log(2 * p) / np.log(2), 0.0, 1.0, 0.0, 0.0, np.log(2 * p) / np.log(2)]
    )
    # the same preference in a larger catalogue: raw p falls with n, the certainty does not collapse
    wide = torch.zeros(1, 10_000)
    wide[0, 0] = 8.0
    assert torch.softmax(wide, 1).max() < 0.3 < top_certainty(wide).item() < 1.0


def test_disagreement_dispatches_and_rejects_unknown_measure() -> None:
    llm, srm = torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[1.0, 3.0, 2.0]])
    assert torch.equal(disagreement(llm, srm, "kendall"), kendall_distance(llm, srm))
    assert torch.equal(disagreement(llm, srm), rank_displacement(llm, srm))
    with pytest.raises(ValueError, match="measure must be one of"):
        disagreement(llm, srm, "spearman")
    for catalogue_signal in ("drift", "confidence"):
        with pytest.raises(ValueError, match="use topk_drift or top_certainty"):
            disagreement(llm, srm, catalogue_signal)


def test_list_ranks_pessimistic_and_absent_or_padded_targets_miss() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.5, -INF], [0.9, 0.5, -INF, -INF], [0.1, 0.2, 0.3, 0.4]])
    items = torch.tensor([[7, 8, 9, 0], [7, 8, 9, 0], [1, 2, 3, 4]])
    ranks = scored_list_ranks(scores, items, torch.tensor([8, 9, 5]))
    assert ranks.tolist() == [2.0, INF, INF]
