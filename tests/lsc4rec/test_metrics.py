import math

import numpy as np
import pytest
import torch

from lsc4rec.metrics import list_ranks, metrics_from_ranks, target_ranks


def test_target_ranks_are_pessimistic_on_ties() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.2], [3.0, 1.0, 2.0, 1.0]])
    # row 0: target index 1 ties with index 2 -> rank 1 (after the tie); row 1: target index 3 ties index 1
    assert target_ranks(scores, torch.tensor([1, 3])).tolist() == [1.0, 3.0]
    assert target_ranks(scores, torch.tensor([0, 0])).tolist() == [3.0, 0.0]


def test_target_ranks_absent_target_and_excluded_items() -> None:
    scores = torch.tensor([[-math.inf, 1.0, -math.inf]])
    assert target_ranks(scores, torch.tensor([1])).tolist() == [0.0]
    assert math.isinf(target_ranks(scores, torch.tensor([-1]))[0])


def test_metrics_hand_worked() -> None:
    ranks = np.array([0.0, 1.0, 4.0, 12.0, np.inf])
    m = metrics_from_ranks(ranks, cutoffs=(1, 5, 10))
    assert m["hr@1"] == pytest.approx(1 / 5)
    assert m["hr@5"] == pytest.approx(3 / 5)
    assert m["hr@10"] == pytest.approx(3 / 5)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 5)
    assert m["ndcg@1"] == pytest.approx(1 / 5)


def test_metrics_reject_empty() -> None:
    with pytest.raises(ValueError, match="at least one"):
        metrics_from_ranks(np.array([]))


def test_list_ranks() -> None:
    lists = np.array([[5, 3, 9], [1, 2, 4]])
    ranks = list_ranks(lists, np.array([9, 7]))
    assert ranks[0] == 2 and math.isinf(ranks[1])


def test_a_nan_target_score_is_a_miss_not_a_perfect_hit() -> None:
    """A diverged model scores NaN; NaN >= NaN is False, so the old count gave rank -1 (a hit everywhere)."""
    scores = torch.tensor([[math.nan, math.nan, math.nan], [0.3, 0.1, 0.2]])
    ranks = target_ranks(scores, torch.tensor([1, 1]))
    assert math.isinf(ranks[0]) and ranks[1] == 2.0
    assert metrics_from_ranks(ranks.numpy(), cutoffs=(1,))["hr@1"] == 0.0


def test_a_nan_score_of_another_item_outranks_the_target() -> None:
    """NaN >= x is False, so a row with NaN elsewhere would rank its target too well: count NaN as a tie."""
    scores = torch.tensor([[0.2, math.nan, 0.9, math.nan], [0.5, 0.1, math.nan, -math.inf]])
    assert target_ranks(scores, torch.tensor([2, 0])).tolist() == [2.0, 1.0]
