import numpy as np
import torch

from lsc4rec.data import TemporalSplit
from lsc4rec.floors import ItemTransition, MostPopular, reference_floors
from lsc4rec.metrics import metrics_from_ranks
from lsc4rec.scoring import evaluate_full, full_catalogue_ranks
from tests.conftest import make_dataset

TRAIN = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([2, 4]), np.array([5, 2, 4])]


def test_most_popular_counts_training_items() -> None:
    floor = MostPopular(TRAIN, num_items=5)
    scores = floor.score_all(torch.tensor([[0, 1], [3, 4]]))
    assert scores[0].tolist() == [-np.inf, 2, 4, 1, 3, 1]
    assert torch.equal(scores[0], scores[1])
    assert floor.score(torch.tensor([[1]]), torch.tensor([[4, 3]])).tolist() == [[3.0, 1.0]]


def test_item_transition_ranks_by_count_then_popularity() -> None:
    floor = ItemTransition(TRAIN, num_items=5)
    # after item 2: 2->4 three times, 2->3 once; the rest by popularity (2: 4, 1: 2, 5: 1)
    scores = floor.score_all(torch.tensor([[1, 2]]))[0]
    order = torch.argsort(scores[1:], descending=True, stable=True) + 1
    assert order.tolist() == [4, 3, 2, 1, 5]
    # after item 3 (no outgoing transition): pure popularity
    scores = floor.score_all(torch.tensor([[3]]))[0]
    assert (torch.argsort(scores[1:], descending=True, stable=True) + 1).tolist()[:2] == [2, 4]


def test_full_catalogue_ranks_exclude_history() -> None:
    split = TemporalSplit(make_dataset([[1, 2, 3, 4, 5], [5, 2, 4, 1, 3]]), lag=0)
    floor = ItemTransition([split.srm_train_sequence(u) for u in range(2)], num_items=5)
    ranks = full_catalogue_ranks(floor, split.views("test", "device"), split.targets("test"), max_len=50)
    # user 0: history [1,2,3,4], last 4 -> no transition from 4 except 4->... none; candidates {5} only -> rank 0
    # user 1: history [5,2,4,1], last 1 -> 1->2 (excluded); remaining {3}: rank 0
    assert ranks.tolist() == [0.0, 0.0]
    assert metrics_from_ranks(ranks)["ndcg@10"] == 1.0


def test_the_floors_are_fitted_without_the_test_targets() -> None:
    """4 -> 5 is each user's test transition (lag 0): fitted on whole sequences, the floor would rank 5 first."""
    split = TemporalSplit(make_dataset([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]), lag=0)
    assert reference_floors(split, 50)["item-transition"]["fresh"]["hr@5"] == 0.0


def test_full_catalogue_evaluation_queries_the_view_it_is_asked_for_in_any_batch_size() -> None:
    """Lag 1: the device view ends 3 -> 4 and the test target is 5; the cloud view ends at 3, a step behind."""
    split = TemporalSplit(make_dataset([[1, 2, 3, 4, 5], [1, 2, 3, 5, 4], [2, 3, 4, 5, 1]]), lag=1)
    floor = ItemTransition([np.array([1, 2, 3, 4, 5, 1, 2])], num_items=5)
    fresh = evaluate_full(floor, split, "test", 50, np.array([0]), side="device", cutoffs=(1,))
    stale = evaluate_full(floor, split, "test", 50, np.array([0]), side="cloud", cutoffs=(1,))
    assert (fresh["hr@1"], stale["hr@1"]) == (1.0, 0.0)
    histories, targets = split.views("test", "device"), split.targets("test")
    np.testing.assert_array_equal(
        full_catalogue_ranks(floor, histories, targets, 50, batch_size=1),
        full_catalogue_ranks(floor, histories, targets, 50),
    )
