import itertools

import numpy as np
import pytest

from lsc4rec.data import TemporalSplit, partition_users
from lsc4rec.data.batching import left_pad, next_item_batch, windows
from lsc4rec.data.partition import fleet_size
from lsc4rec.errors import ConfigError, DataFormatError
from tests.conftest import make_dataset


def test_split_views_on_hand_worked_user() -> None:
    split = TemporalSplit(make_dataset([[1, 2, 3, 4, 5, 6, 7]]), lag=2)
    assert split.srm_train_sequence(0).tolist() == [1, 2, 3, 4, 5]
    assert split.device_view(0, "valid").tolist() == [1, 2, 3, 4, 5]
    assert split.device_view(0, "test").tolist() == [1, 2, 3, 4, 5, 6]
    assert split.cloud_view(0, "valid").tolist() == [1, 2, 3]
    assert split.cloud_view(0, "test").tolist() == [1, 2, 3, 4]
    assert split.llm_train_sequence(0).tolist() == [1, 2]
    assert (split.llm_valid_target(0), split.target(0, "valid"), split.target(0, "test")) == (3, 6, 7)


@pytest.mark.parametrize("lag", [0, 1, 2, 3])
def test_split_invariants_hold_for_every_user(lag: int) -> None:
    rng = np.random.default_rng(lag)
    sequences = [rng.permutation(np.arange(1, 40))[: rng.integers(7, 30)].tolist() for _ in range(50)]
    split = TemporalSplit(make_dataset(sequences, 39), lag=lag)
    for u, seq in enumerate(sequences):
        n = len(seq)
        fresh = set(seq[n - 1 - lag : n - 1])  # the ℓ newest items of the device view at test
        assert fresh.isdisjoint(split.cloud_view(u, "test").tolist())
        assert len(split.cloud_view(u, "test")) == n - 1 - lag
        valid, test = split.target(u, "valid"), split.target(u, "test")
        for training_view in (split.srm_train_sequence(u), split.llm_train_sequence(u)):
            assert valid not in training_view.tolist() and test not in training_view.tolist()
        assert test not in split.device_view(u, "test").tolist()
        assert valid not in split.device_view(u, "valid").tolist()
        # the LLM never trains on (or early-stops on) anything the cloud had not seen at validation time
        assert split.llm_valid_target(u) == split.cloud_view(u, "valid")[-1]
        assert len(split.llm_train_sequence(u)) == n - 3 - lag


def test_split_rejects_lag_that_empties_cloud_view() -> None:
    # the advice says how each kind of command takes a higher k-core (not all have --kcore or --set)
    fix = r"higher k-core \(`lsc4rec data prepare --kcore N` for the commands given a prepared file, `--set"
    with pytest.raises(ConfigError, match=rf"data.lag: must be in \[0, 2\].*{fix}"):
        TemporalSplit(make_dataset([[1, 2, 3, 4, 5]]), lag=3)


def test_too_short_sequences_and_nothing_to_train_on_are_refused() -> None:
    with pytest.raises(
        DataFormatError,
        match=r"at least 3 items.*has 2\. Prepare it with a k-core of 3 or more \(`lsc4rec data",
    ):
        TemporalSplit(make_dataset([[1, 2, 3], [2, 3]]), lag=0)
    three = TemporalSplit(
        make_dataset([[1, 2, 3], [2, 3, 1]]), lag=0
    )  # a valid split with no training target
    with pytest.raises(DataFormatError, match="the SRM needs a user with at least 4 items"):
        three.check_trainable("SRM")
    with pytest.raises(DataFormatError, match="the LLM needs a user with at least 5 items"):
        three.check_trainable("LLM")
    five = TemporalSplit(make_dataset([[1, 2, 3, 4, 5], [2, 3, 1]]), lag=0)
    five.check_trainable("SRM")
    five.check_trainable("LLM")
    with pytest.raises(DataFormatError, match="at least 6 items to have a training target under lag 1"):
        TemporalSplit(make_dataset([[1, 2, 3, 4, 5], [2, 3, 1, 4]]), lag=1).check_trainable("LLM")


def test_partition_covers_every_user_once_and_is_seeded() -> None:
    parts = partition_users(10, 3, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    assert sorted(len(p) for p in parts) == [3, 3, 4]
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition_users(10, 3, seed=1), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, partition_users(10, 3, seed=2), strict=True))
    assert [len(p) for p in partition_users(4, 4)] == [1, 1, 1, 1]
    with pytest.raises(ConfigError, match="num_nodes"):
        partition_users(3, 4)


def test_fleet_size_zero_is_one_node_per_user_and_more_nodes_than_users_is_refused() -> None:
    assert fleet_size(0, 610) == 610 and fleet_size(10, 610) == 10
    with pytest.raises(ConfigError, match=r"federation.num_nodes: must be in \[1, 610\].*got 611"):
        fleet_size(611, 610)


def test_left_pad_and_next_item_batch() -> None:
    padded = left_pad([np.array([1, 2, 3]), np.array([4])], max_len=2)
    assert padded.tolist() == [[2, 3], [0, 4]]
    batch = next_item_batch([np.array([5, 6, 7]), np.array([8, 9])], max_len=5)
    assert batch["history"].tolist() == [[5, 6], [0, 8]]
    assert batch["target"].tolist() == [[6, 7], [0, 9]]


def test_windows_cover_each_transition_once() -> None:
    seq = np.arange(1, 24)
    parts = windows(seq, 5)
    pairs = [(a, b) for w in parts for a, b in itertools.pairwise(w)]
    assert pairs == list(itertools.pairwise(seq))
    assert all(len(w) <= 6 for w in parts) and len(parts[-1]) == 6
