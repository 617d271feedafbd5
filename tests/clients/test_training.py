"""Tests of local training's optimizer state, which an edge box keeps between rounds, and of adaptation."""

import copy

import numpy as np
import pytest
import torch

from clients.srm import SRMConfig, build_srm
from clients.training import (
    adapt,
    load_optimizer_arrays,
    local_train,
    optimizer_arrays,
    proximal_term,
    train_epoch,
)


def test_restored_adam_state_continues_exactly_where_it_stopped() -> None:
    torch.manual_seed(0)
    model = build_srm(SRMConfig(hidden=8, layers=1, max_len=6, dropout=0.0), 20)
    sequences = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8, 9]), np.array([3, 4, 5, 6, 7, 8])]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    local_train(model, sequences, None, 2, 2, optimizer, seed=0)
    arrays = optimizer_arrays(optimizer)
    assert {name.split(".", 1)[1] for name in arrays} == {"step", "exp_avg", "exp_avg_sq"}

    restored = copy.deepcopy(model)  # a new round: the same weights in a freshly built optimizer
    fresh = copy.deepcopy(model)
    kept_optimizer = torch.optim.Adam(restored.parameters(), lr=1e-2)
    load_optimizer_arrays(kept_optimizer, {k: v.clone() for k, v in arrays.items()})
    local_train(model, sequences, None, 1, 2, optimizer, seed=1)  # the uninterrupted run
    local_train(restored, sequences, None, 1, 2, kept_optimizer, seed=1)
    local_train(fresh, sequences, None, 1, 2, torch.optim.Adam(fresh.parameters(), lr=1e-2), seed=1)
    for a, b in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(model.parameters(), fresh.parameters(), strict=True))


def test_a_collaborative_example_trains_its_last_target_against_the_llms_list() -> None:
    """An example with hard negatives (the LLM's list for its prefix) trains its last position only, with the
    hard term weighted as asked; one without trains every position; two items are one example."""
    torch.manual_seed(0)
    model = build_srm(SRMConfig(hidden=8, layers=1, max_len=6, dropout=0.0), 20)
    seen = []
    loss = model.loss

    def recording(batch: dict, hard_weight: float = 1.0) -> torch.Tensor:
        seen.append((batch["target"].clone(), hard_weight))
        return loss(batch, hard_weight=hard_weight)

    model.loss = recording
    sequences = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8, 9, 10])]
    hard = [np.array([], dtype=np.int64), np.array([11, 12])]
    rng = np.random.default_rng(0)
    train_epoch(model, sequences, torch.optim.Adam(model.parameters()), 2, rng, hard, hard_weight=0.25)
    [(targets, weight)] = seen
    assert {int(row[-1]): int((row > 0).sum()) for row in targets} == {5: 4, 10: 1} and weight == 0.25
    assert np.isfinite(train_epoch(model, [np.array([3, 4])], torch.optim.Adam(model.parameters()), 2, rng))


def test_the_proximal_term_measures_the_distance_from_the_weights_it_started_from() -> None:
    model = build_srm(SRMConfig(hidden=8, layers=1, max_len=6, dropout=0.0), 20)
    penalty = proximal_term(model, mu=2.0)
    assert penalty().item() == 0.0
    first = next(model.parameters())
    with torch.no_grad():
        first.add_(1.0)  # an optimizer's step moves the weights in place
    assert penalty().item() == pytest.approx(0.5 * 2.0 * first.numel())


def test_adapt_depends_on_its_arguments_only() -> None:
    """The gate's calibration pass and the evaluation after it must adapt the same personal copy."""
    torch.manual_seed(0)
    model = build_srm(SRMConfig(hidden=8, layers=1, max_len=6, dropout=0.5), 20)
    sequences = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8, 9])]
    first = adapt(model, sequences, 3, 1e-2, seed=4)
    torch.rand(7)  # the global generator moves on, as other work on the node would move it
    state = torch.random.get_rng_state()
    again = adapt(model, sequences, 3, 1e-2, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)  # and adapt leaves it where it was
    other = adapt(model, sequences, 3, 1e-2, seed=5)
    for a, b in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters(), strict=True))


def test_local_training_draws_its_dropout_from_its_seed_alone() -> None:
    """A node trains in many rounds with the round's seed: each round must get dropout draws of its own."""
    torch.manual_seed(0)
    model = build_srm(SRMConfig(hidden=8, layers=1, max_len=6, dropout=0.5), 20)
    sequences = [np.array([1, 2, 3, 4, 5])]  # one batch: the batch order cannot differ, only torch's draws

    def trained(seed: int) -> list[torch.Tensor]:
        copy_ = copy.deepcopy(model)
        local_train(copy_, sequences, None, 1, 4, torch.optim.Adam(copy_.parameters(), lr=1e-2), seed)
        return list(copy_.parameters())

    first = trained(1001)
    torch.manual_seed(1001 + 1000)  # where the global generator stands does not matter...
    state = torch.random.get_rng_state()
    again = trained(1001)
    assert torch.equal(torch.random.get_rng_state(), state)  # ...and training leaves it where it was
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not torch.equal(a, c) for a, c in zip(first, trained(2001), strict=True))


def test_a_diverging_fit_stops_with_a_message_naming_the_learning_rate() -> None:
    from clients.training import fit
    from lsc4rec.config import TrainConfig
    from lsc4rec.errors import ConfigError

    torch.manual_seed(0)
    model = build_srm(SRMConfig(hidden=8, layers=1, max_len=6, dropout=0.0), 20)
    sequences = [np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8, 9])] * 8
    with pytest.raises(
        ConfigError, match=r"config train\.lr: must be small enough .* loss became nan at epoch"
    ):
        fit(model, sequences, lambda m: 0.0, TrainConfig(lr=1e30, epochs=3), seed=0, progress=False)
