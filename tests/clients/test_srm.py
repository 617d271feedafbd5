"""Tests of the small sequential recommenders: shapes, masking, losses and that they can learn."""

import pytest
import torch
import torch.nn.functional as F

from clients.srm import DIN, GRU4Rec, SASRec, SequentialRecommender, SRMConfig, build_srm

NUM_ITEMS = 30
MODELS = ("sasrec", "gru4rec", "din")


def make_model(name: str, **overrides: object) -> SequentialRecommender:
    torch.manual_seed(0)
    config = SRMConfig(**{"model": name, "hidden": 16, "max_len": 24, "dropout": 0.0, **overrides})
    return build_srm(config, NUM_ITEMS)


def histories(batch: int = 4, length: int = 10) -> torch.Tensor:
    """Left-padded random histories ``[B, T]`` with lengths 1..T (row 0 is full)."""
    generator = torch.Generator().manual_seed(1)
    items = torch.randint(1, NUM_ITEMS + 1, (batch, length), generator=generator)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0] = length
    return items * (torch.arange(length)[None] >= length - lengths[:, None])


def training_batch(batch: int = 4, length: int = 10) -> dict[str, torch.Tensor]:
    """Inputs and next-item targets from one left-padded sequence per row."""
    sequence = histories(batch, length + 1)
    history = sequence[:, :-1]
    return {"history": history, "target": sequence[:, 1:] * (history != 0)}


def left_pad(history: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([history.new_zeros(history.size(0), length - history.size(1)), history], dim=1)


def test_config_rejects_invalid_values() -> None:
    with pytest.raises(ValueError, match=r"srm.model: must be sasrec\|gru4rec\|din, got 'bert'\."):
        SRMConfig(model="bert")
    with pytest.raises(
        ValueError, match=r"srm.hidden: must be positive and divisible by srm.heads, got 64\."
    ):
        SRMConfig(hidden=64, heads=3)
    with pytest.raises(ValueError, match=r"srm.dropout: must be in \[0, 1\), got 1\.0\."):
        SRMConfig(dropout=1.0)


@pytest.mark.parametrize(("name", "cls"), [("sasrec", SASRec), ("gru4rec", GRU4Rec), ("din", DIN)])
def test_build_srm_returns_named_model(name: str, cls: type) -> None:
    assert type(make_model(name)) is cls


@pytest.mark.parametrize("name", MODELS)
def test_score_shapes_and_padding_column(name: str) -> None:
    model = make_model(name).eval()
    history = histories()
    candidates = torch.randint(1, NUM_ITEMS + 1, (4, 7))
    assert model.score(history, candidates).shape == (4, 7)
    scores = model.score_all(history)
    assert scores.shape == (4, NUM_ITEMS + 1)
    assert torch.isneginf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()


@pytest.mark.parametrize("name", MODELS)
def test_score_matches_score_all(name: str) -> None:
    model = make_model(name).eval()
    history = histories()
    candidates = torch.randint(1, NUM_ITEMS + 1, (4, 7))
    expected = model.score_all(history).gather(1, candidates)
    torch.testing.assert_close(model.score(history, candidates), expected, atol=1e-5, rtol=1e-5)


def test_din_chunked_catalogue_matches_single_chunk() -> None:
    model = make_model("din").eval()
    history = histories()
    whole = model.score_all(history)
    model.chunk_elements = 1  # one item per chunk
    torch.testing.assert_close(model.score_all(history), whole, atol=1e-5, rtol=1e-5)


def test_din_shared_candidates_match_per_key_candidates_and_their_gradients() -> None:
    """The catalogue's one-product path of DIN's activation unit is the same map as the per-key path."""
    unit = make_model("din").attention
    keys, candidates = torch.randn(5, 16), torch.randn(7, 16)
    shared = unit(keys, candidates)
    (shared_grad,) = torch.autograd.grad(shared.square().sum(), unit.first.weight)
    per_key = unit(keys, candidates.expand(5, -1, -1))
    (per_key_grad,) = torch.autograd.grad(per_key.square().sum(), unit.first.weight)
    assert shared.shape == (5, 7)
    assert unit(keys[:0], candidates).shape == (0, 7)  # no history item at all: an empty batch, no crash
    torch.testing.assert_close(shared, per_key, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_grad, per_key_grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_amount_of_left_padding_does_not_change_scores(name: str) -> None:
    model = make_model(name).eval()
    history = histories(length=10)
    torch.testing.assert_close(
        model.score_all(left_pad(history, 20)), model.score_all(history), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_future_items_do_not_change_past_outputs(name: str) -> None:
    model = make_model(name).eval()
    history = histories(length=10)
    history[:, 0] = 1  # every row full, so every column is a real item
    changed = history.clone()
    changed[:, 6:] = changed[:, 6:] % NUM_ITEMS + 1
    before, after = model.encode_all(history), model.encode_all(changed)
    torch.testing.assert_close(after[:, :6], before[:, :6], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(after[:, 6:], before[:, 6:])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("loss", "num_negatives"), [("ce", 0), ("ce", 5), ("bce", 0), ("bce", 3)])
@pytest.mark.parametrize("hard", [False, True])
def test_loss_is_finite_and_differentiable(name: str, loss: str, num_negatives: int, hard: bool) -> None:
    model = make_model(name, loss=loss, num_negatives=num_negatives, dropout=0.2).train()
    batch = training_batch()
    if hard:
        hard_negatives = torch.randint(1, NUM_ITEMS + 1, (4, 6))
        hard_negatives[:, -2:] = 0
        hard_negatives[:, 0] = batch["target"][:, -1]  # the target itself must be masked out
        batch["hard_negatives"] = hard_negatives
    value = model.loss(batch)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert model.item_embedding.weight.grad is not None
    assert torch.isfinite(model.item_embedding.weight.grad).all()


def seeded_loss(model: torch.nn.Module, batch: dict, hard_weight: float = 1.0) -> torch.Tensor:
    """The loss with torch seeded first: two calls draw the same sampled negatives, so their difference is the
    hard-negative term alone."""
    torch.manual_seed(0)
    return model.loss(batch, hard_weight=hard_weight)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("loss", "num_negatives"), [("ce", 0), ("ce", 5), ("bce", 2)])
def test_hard_negative_equal_to_target_is_ignored(name: str, loss: str, num_negatives: int) -> None:
    model = make_model(name, loss=loss, num_negatives=num_negatives).eval()
    batch = training_batch()
    plain = seeded_loss(model, batch)
    hard = torch.zeros(4, 3, dtype=torch.long)
    hard[:, 1] = batch["target"][:, -1]
    torch.testing.assert_close(seeded_loss(model, {**batch, "hard_negatives": hard}), plain)
    hard[:, 2] = batch["target"][:, -1] % NUM_ITEMS + 1  # a real hard negative adds to the loss
    assert seeded_loss(model, {**batch, "hard_negatives": hard}) > plain


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("loss", "num_negatives"), [("ce", 0), ("ce", 5), ("bce", 2)])
def test_padding_and_the_target_in_a_hard_list_add_nothing(name: str, loss: str, num_negatives: int) -> None:
    model = make_model(name, loss=loss, num_negatives=num_negatives).eval()
    batch = training_batch()
    target = batch["target"][:, -1]
    other = target % NUM_ITEMS + 1
    short = seeded_loss(model, {**batch, "hard_negatives": other[:, None]})
    padded = torch.stack([other, torch.zeros_like(other), target], dim=1)
    torch.testing.assert_close(seeded_loss(model, {**batch, "hard_negatives": padded}), short)


@pytest.mark.parametrize("name", MODELS)
def test_a_sampled_negative_equal_to_the_target_never_counts_against_it(name: str) -> None:
    """A catalogue of one item: every draw is the target. CE is then over the target alone (loss 0), and BCE
    keeps only its positive term."""
    batch = {"history": torch.tensor([[0, 0, 1]]), "target": torch.tensor([[0, 0, 1]])}
    settings = {"model": name, "hidden": 16, "max_len": 24, "dropout": 0.0}
    torch.manual_seed(0)
    ce = build_srm(SRMConfig(**settings, loss="ce", num_negatives=5), 1).eval()
    assert ce.loss(batch).item() == pytest.approx(0.0, abs=1e-6)
    bce = build_srm(SRMConfig(**settings, loss="bce", num_negatives=3), 1).eval()
    positive = bce.score(batch["history"], torch.tensor([[1]]))[0, 0]
    assert bce.loss(batch).item() == pytest.approx(-F.logsigmoid(positive).item(), rel=1e-5)


def test_sampled_negatives_are_drawn_from_the_whole_catalogue() -> None:
    torch.manual_seed(0)
    drawn = make_model("sasrec", loss="bce")._draw((5000,), torch.device("cpu"))
    assert set(drawn.tolist()) == set(range(1, NUM_ITEMS + 1))


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_hard_weight_scales_the_hard_negative_term(loss: str) -> None:
    model = make_model("sasrec", loss=loss, num_negatives=5).eval()
    batch = training_batch()
    plain = seeded_loss(model, batch)
    with_hard = {**batch, "hard_negatives": torch.randint(1, NUM_ITEMS + 1, (4, 6))}
    term = seeded_loss(model, with_hard) - plain
    assert term > 0
    torch.testing.assert_close(seeded_loss(model, with_hard, hard_weight=0.0), plain)
    torch.testing.assert_close(seeded_loss(model, with_hard, hard_weight=0.1), plain + 0.1 * term)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_a_collaborative_rows_hard_term_does_not_depend_on_its_batch_mates(loss: str) -> None:
    """The hard term is a mean over the rows with hard negatives: plain windows beside them do not dilute it."""
    model = make_model("sasrec", loss=loss).eval()
    batch = training_batch()
    hard = torch.zeros(4, 3, dtype=torch.long)
    hard[0] = torch.tensor([20, 21, 22])  # row 0 is a collaborative example, rows 1-3 plain windows

    def hard_term(rows: slice) -> torch.Tensor:
        part = {key: value[rows] for key, value in {**batch, "hard_negatives": hard}.items()}
        return seeded_loss(model, part) - seeded_loss(model, part, hard_weight=0.0)

    alone, batched = hard_term(slice(0, 1)), hard_term(slice(0, 4))
    assert alone > 0
    torch.testing.assert_close(batched, alone)


@pytest.mark.parametrize("name", MODELS)
def test_training_learns_successor_pattern(name: str) -> None:
    """Next item = item + 1 (mod N): a short run must at least halve the loss."""
    model = make_model(name, layers=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(60):
        start = torch.randint(0, NUM_ITEMS, (16, 1), generator=generator)
        sequence = (start + torch.arange(9)[None]) % NUM_ITEMS + 1  # [B, 9]
        lengths = torch.randint(2, 10, (16, 1), generator=generator)
        sequence = sequence * (torch.arange(9)[None] >= 9 - lengths)
        history = sequence[:, :-1]
        loss = model.loss({"history": history, "target": sequence[:, 1:] * (history != 0)})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
