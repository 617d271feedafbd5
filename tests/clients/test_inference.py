"""Tests of device-side collaborative inference with a tiny real SRM and hand-made candidate lists."""

import math

import numpy as np
import pytest
import torch

import clients.inference
from clients.app import _stale_lists
from clients.cloud import ListCache
from clients.inference import (
    catalogue_signals,
    collaborative_inference,
    drop_seen,
    gate,
    held_list_signal,
    srm_list_scores,
)
from clients.node import load_node
from clients.srm import SequentialRecommender, SRMConfig, build_srm
from llm_cloud.processes import free_port
from lsc4rec.config import CATALOGUE_SIGNALS, MEASURES, RunConfig
from lsc4rec.outcomes import StageOutcome, signal_bin_edges, signal_bins, threshold_for_budget
from lsc4rec.ranking import disagreement, fuse, scored_list_ranks
from lsc4rec.scoring import catalogue_scores

NUM_ITEMS, K, MAX_LEN = 40, 12, 8


@pytest.fixture(scope="module")
def model() -> SequentialRecommender:
    torch.manual_seed(0)
    config = SRMConfig(model="sasrec", hidden=8, layers=1, max_len=MAX_LEN, dropout=0.1)
    return build_srm(config, NUM_ITEMS)


def histories() -> list[np.ndarray]:
    return [
        np.array([1, 2, 3]),
        np.array([4, 5, 6, 7, 8, 9, 10, 11, 12, 13]),
        np.array([14]),
        np.array([2, 3]),
    ]


def cloud_views() -> list[np.ndarray]:
    """What the cloud had seen of each user: the histories without their newest interactions (lag 2)."""
    return [h[:-2] if len(h) > 2 else h[:1] for h in histories()]


def signals(model: SequentialRecommender, cloud: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Both catalogue signals [4] of the test users, with ``cloud`` as what the stale list was made from."""
    return catalogue_signals(model, histories(), cloud, CATALOGUE_SIGNALS, K, MAX_LEN)


def llm_list(first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of K items ``first..first+K-1`` in LLM order (descending log-probabilities) per user."""
    items = torch.stack([torch.arange(first + u, first + u + K) for u in range(4)])
    return items, -torch.arange(K, dtype=torch.float32).expand(4, K) * 0.3 - 1.0


def infer(
    model: SequentialRecommender,
    targets: np.ndarray,
    alphas: tuple[float, ...] = (0.0, 1.0),
    measures: tuple[str, ...] | None = None,
    **kwargs,
) -> dict[str, StageOutcome]:
    """Collaborative inference of the four test users: stale list from item 3 on, fresh list from item 20 on.

    ``measures=None`` leaves collaborative_inference its own default.
    """
    stale_items, stale_scores = llm_list(3)
    fresh_items, fresh_scores = llm_list(20)
    return collaborative_inference(
        model,
        histories(),
        cloud_views(),
        stale_items,
        stale_scores,
        fresh_items,
        fresh_scores,
        targets,
        alphas,
        max_len=MAX_LEN,
        **({} if measures is None else {"measures": measures}),
        **kwargs,
    )


def ndcg_sum(ranks: list[float]) -> float:
    return sum(1.0 / math.log2(r + 2) for r in ranks if r < 10)


def srm_order_rank(
    model: SequentialRecommender, history: np.ndarray, items: torch.Tensor, target: int
) -> float:
    """Independent reference: rank of ``target`` among the real items when sorted by the SRM alone."""
    model.eval()
    with torch.no_grad():
        scores = model.score(torch.as_tensor(history[-MAX_LEN:])[None], items[None])[0]
    real = items != 0
    if not (items == target).any():
        return math.inf
    target_score = scores[items == target][0]
    return float(((scores >= target_score) & real).sum() - 1)


def test_drop_seen_pads_history_items_in_place() -> None:
    items = torch.tensor([[3, 9, 1, 7], [5, 6, 0, 8]])
    scores = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-1.0, -2.0, -torch.inf, -3.0]])
    kept_items, kept_scores = drop_seen(items, scores, [np.array([1, 3]), np.array([8])])
    assert kept_items.tolist() == [[0, 9, 0, 7], [5, 6, 0, 0]]
    assert kept_scores.tolist() == [[-math.inf, -2.0, -math.inf, -4.0], [-1.0, -2.0, -math.inf, -math.inf]]
    assert items[0, 0] == 3  # inputs untouched


def test_rerank_scores_real_slots_masks_padding_and_restores_mode(model: SequentialRecommender) -> None:
    items = torch.tensor([[5, 0, 7], [9, 10, 0]])
    model.train()
    scores = srm_list_scores(model, [np.array([1, 2]), np.array([3])], items, MAX_LEN)
    assert model.training
    assert torch.isinf(scores[0, 1]) and torch.isinf(scores[1, 2]) and torch.isfinite(scores[0, [0, 2]]).all()
    model.eval()
    with torch.no_grad():
        expected = model.score(torch.tensor([[1, 2]]), torch.tensor([[5, 7]]))
    assert torch.allclose(scores[0, [0, 2]], expected[0])


def test_collaborative_inference_alpha_one_reproduces_llm_ranks(model: SequentialRecommender) -> None:
    # stale list from item 3: user 0 has seen 3, dropped, the rest shifts up one place
    outcome = infer(model, np.array([5, 15, 25, 39]))["drift"]  # user 3's target is in neither list: a miss
    # LLM order ranks among kept items: stale user0 5 at 1 (3 dropped); user1 15 at 11 (4..13 seen -> 14,15: 1);
    # user2 25 absent from 5..16; fresh: user0 absent, user1 15 absent (21..32), user2 25 at 3.
    assert outcome.stale_ndcg[1] == pytest.approx(ndcg_sum([1.0, 1.0]))
    assert outcome.fresh_ndcg[1] == pytest.approx(ndcg_sum([3.0]))
    assert outcome.stale_hr[1] == 2 and outcome.fresh_hr[1] == 1
    assert outcome.stale_recall == 2 and outcome.fresh_recall == 1 and outcome.users == 4


def test_collaborative_inference_alpha_zero_reproduces_srm_ranks(model: SequentialRecommender) -> None:
    stale_items, stale_scores = llm_list(3)
    fresh_items, _ = llm_list(20)
    targets = np.array([12, 15, 30, 10])
    outcome = infer(model, targets)["drift"]
    kept, _ = drop_seen(stale_items, stale_scores, histories())
    ranks = [srm_order_rank(model, h, kept[u], int(targets[u])) for u, h in enumerate(histories())]
    assert outcome.stale_ndcg[0] == pytest.approx(ndcg_sum(ranks))
    assert outcome.stale_ndcg[0] != pytest.approx(outcome.stale_ndcg[1])  # the SRM order is not the LLM's
    fresh = [srm_order_rank(model, h, fresh_items[u], int(targets[u])) for u, h in enumerate(histories())]
    assert outcome.fresh_ndcg[0] == pytest.approx(ndcg_sum(fresh))
    # the paired squares: per user, SRM-only's NDCG@10 against LLM-only's (the kept items in the LLM's order)
    llm = [((kept[u] != 0).cumsum(0) - 1)[kept[u] == t].tolist() or [math.inf] for u, t in enumerate(targets)]
    gaps = [ndcg_sum([srm]) - ndcg_sum(by_llm) for srm, by_llm in zip(ranks, llm, strict=True)]
    assert sum(g * g for g in gaps) > 0  # the two orders disagree on some user's target
    assert outcome.pair_sq_first.tolist() == pytest.approx([0.0, sum(g * g for g in gaps)])
    assert outcome.pair_sq_last.tolist() == pytest.approx([sum(g * g for g in gaps), 0.0])


def test_collaborative_inference_fuses_with_the_configured_normalisation(
    model: SequentialRecommender,
) -> None:
    """``norm`` reaches the fusion: each user's target is the top of the rank-normalised fused list at α = 0.5.

    The LLM's first item is far ahead of the rest, which min-max scaling keeps and rank scaling discards, so
    the two fused lists differ in their top item for some user.
    """
    items, _ = llm_list(3)
    scores = torch.cat(
        [torch.full((4, 1), -0.1), -5.0 - 0.01 * torch.arange(K - 1.0).expand(4, K - 1)], dim=1
    )
    kept, llm = drop_seen(items, scores, histories())
    srm = srm_list_scores(model, histories(), kept, MAX_LEN)
    tops = {
        norm: kept.gather(1, fuse(llm, srm, 0.5, norm).argmax(dim=1, keepdim=True))[:, 0].numpy()
        for norm in ("rank", "minmax")
    }
    assert (tops["rank"] != tops["minmax"]).any(), "the test needs lists whose fused top depends on the norm"
    ndcg = {
        norm: collaborative_inference(
            model,
            histories(),
            cloud_views(),
            items,
            scores,
            items,
            scores,
            tops["rank"],
            (0.0, 0.5, 1.0),
            max_len=MAX_LEN,
            norm=norm,
        )["drift"].stale_ndcg[1]
        for norm in ("rank", "minmax")
    }
    assert ndcg["rank"] == pytest.approx(4.0)  # every user's target ranked first
    assert ndcg["minmax"] < 4.0 - 1e-6  # and not under min-max scaling, the default


def test_collaborative_inference_bins_stale_disagreement_and_counts_requests(
    model: SequentialRecommender,
) -> None:
    stale_items, stale_scores = llm_list(3)
    targets = np.array([5, 15, 25, 39])
    outcome = infer(model, targets, (0.0, 0.5, 1.0), ("displacement",), bins=4, tau=0.25)["displacement"]
    kept_items, kept_scores = drop_seen(stale_items, stale_scores, histories())
    score = disagreement(kept_scores, srm_list_scores(model, histories(), kept_items, MAX_LEN)).numpy()
    assert outcome.bin_count.tolist() == np.histogram(score, bins=4, range=(0, 1))[0].tolist()
    assert outcome.requests == int((score >= 0.25).sum())  # τ on an edge: the bins above it request
    np.testing.assert_allclose(outcome.bin_stale_ndcg.sum(1), outcome.stale_ndcg)
    # the gate reads τ on the bins it was calibrated on (the final gate's 20), not on the report's 4
    for tau in (0.05, 0.1, 0.15, 0.3, 0.35, 0.6, 0.65):
        gated = infer(model, targets, (0.0, 1.0), ("displacement",), bins=4, tau=tau, gate_bins=20)
        assert (
            gated["displacement"].requests
            == gate(score, tau, signal_bin_edges(20), np.random.default_rng(0)).sum()
        )


def test_requests_are_the_users_who_asked_where_the_node_drew_its_gate_first(
    model: SequentialRecommender,
) -> None:
    """``asked`` (a gated fleet's fetch mask) is counted as drawn, whatever τ would draw; only the live signal."""
    targets = np.array([5, 15, 25, 39])
    asked = np.array([True, False, True, True])
    for tau in (-1.0, 1.0):  # everyone, nobody: neither is what the node drew
        outcomes = infer(model, targets, measures=("displacement", "topk"), tau=tau, live="topk", asked=asked)
        assert (outcomes["topk"].requests, outcomes["displacement"].requests) == (3, 0)


def test_a_live_signal_read_to_gate_is_binned_as_it_is_not_read_again(
    model: SequentialRecommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gated node read the live signal of the lists it holds to draw its gate: the evaluation bins that one."""
    targets = np.array([5, 15, 25, 39])
    read = held_list_signal(model, histories(), cloud_views(), *llm_list(3), "confidence", MAX_LEN)
    again = infer(model, targets, measures=("confidence", "topk"), live="confidence")
    asked: list[list[str]] = []
    real = clients.inference.request_signals

    def recording(*args: object) -> dict[str, np.ndarray]:
        asked.append(list(args[4]))
        return real(*args)

    monkeypatch.setattr(clients.inference, "request_signals", recording)
    given = infer(model, targets, measures=("confidence", "topk"), live="confidence", live_signal=read)
    assert asked == [["topk"]]  # the other signals only
    for measure in ("confidence", "topk"):  # the same computation: the same bins
        assert np.array_equal(given[measure].bin_count, again[measure].bin_count)
    shifted = infer(model, targets, measures=("confidence",), live="confidence", live_signal=np.full(4, 0.99))
    assert shifted["confidence"].bin_count[-1] == 4  # the signal given is the one binned


def test_a_hit_at_10_counts_ranks_0_to_9(model: SequentialRecommender) -> None:
    """User 3's stale list is items 6 to 17 in the LLM's order: item 15 sits at rank 9, item 16 at rank 10."""
    for target, hit in ((15, 1.0), (16, 0.0)):
        outcome = infer(model, np.array([39, 39, 39, target]))["drift"]
        assert outcome.stale_hr[-1] == hit  # α = 1: the LLM's order; nobody else's list holds their target


def test_gate_requests_the_bins_above_tau_and_the_share_of_its_own_bin_above_it() -> None:
    edges = signal_bin_edges(10)
    # a cluster of equal scores at 0.5, the lower edge of τ's bin [0.5, 0.6): half that bin lies above τ 0.55
    scores = np.array([0.31, 0.7, 0.6, 1.0] + [0.5] * 4000)
    mask = gate(scores, 0.55, edges, np.random.default_rng(0))
    assert mask[:4].tolist() == [False, True, True, True]
    assert mask[4:].mean() == pytest.approx(0.5, abs=0.03)  # `score > τ` would send none of them
    assert np.array_equal(mask, gate(scores, 0.55, edges, np.random.default_rng(0)))  # seeded
    assert not gate(scores, 1.0, edges, np.random.default_rng(1)).any()  # τ 1: budget 0
    assert gate(scores, edges[0] - 1.0, edges, np.random.default_rng(1)).all()  # below every score: budget 1


def test_gate_realizes_the_rate_tau_was_calibrated_for_on_a_clustered_signal() -> None:
    # An order signal takes few values: 30 % of users at 0.9 exactly, the rest spread below.
    rng = np.random.default_rng(2)
    scores = np.concatenate([np.full(3000, 0.9), rng.uniform(0.0, 0.85, 7000)])
    edges = signal_bin_edges(50)
    tau = threshold_for_budget(np.bincount(signal_bins(scores, edges), minlength=50), edges, 0.1)
    assert (scores > tau).mean() in (
        0.0,
        0.3,
    )  # a hard threshold can only take the cluster whole or not at all
    assert gate(scores, tau, edges, rng).mean() == pytest.approx(0.1, abs=0.01)


def test_drift_is_zero_without_new_interactions_and_matches_catalogue_top_k(
    model: SequentialRecommender,
) -> None:
    drift = signals(model, cloud_views())["drift"]
    assert drift.shape == (4,) and ((drift >= 0) & (drift <= 1)).all()
    assert drift[2] == 0.0  # user 2's cloud view is its whole history: nothing new, same top-k
    assert signals(model, histories())["drift"].eq(0).all()
    # user 1 by hand: the SRM's top-K from both views, the device history excluded from both
    model.eval()
    with torch.no_grad():
        now = model.score_all(torch.as_tensor(histories()[1][-MAX_LEN:])[None])[0]
        before = model.score_all(torch.as_tensor(cloud_views()[1][-MAX_LEN:])[None])[0]
    seen = torch.tensor([0, *histories()[1]])
    now[seen], before[seen] = -torch.inf, -torch.inf
    new = ~torch.isin(now.topk(K).indices, before.topk(K).indices)
    weights = 1 / torch.log2(torch.arange(K) + 2.0)
    assert drift[1].item() == pytest.approx(float((new * weights).sum() / weights.sum()))


def test_drift_compares_the_top_k_without_the_items_consumed_since() -> None:
    """Item 0 led the SRM's order from the cloud view, and the user has consumed it since (-inf now): the top
    item of the rest did not change, so nothing moved."""
    now, before = torch.tensor([[-torch.inf, 2.0, 1.0]]), torch.tensor([[5.0, 2.0, 1.0]])
    assert clients.inference._drift(now, before, k=1).item() == 0.0


def test_confidence_is_the_certainty_of_the_top_item_with_the_history_excluded(
    model: SequentialRecommender,
) -> None:
    confidence = signals(model, cloud_views())["confidence"]
    assert confidence.shape == (4,) and ((confidence > 0) & (confidence <= 1)).all()
    model.eval()
    with torch.no_grad():  # user 1 by hand: softmax over the items not yet consumed, padding excluded
        scores = model.score_all(torch.as_tensor(histories()[1][-MAX_LEN:])[None])[0]
    scores[torch.tensor([0, *histories()[1]])] = -torch.inf
    n = torch.isfinite(scores).sum().item()  # the catalogue without the history and the padding id
    top = torch.softmax(scores.double(), 0).max().item()
    assert confidence[1].item() == pytest.approx(math.log(n * top) / math.log(n))


def test_catalogue_signals_asked_together_equal_each_asked_alone(model: SequentialRecommender) -> None:
    together = signals(model, cloud_views())
    for name in CATALOGUE_SIGNALS:
        alone = catalogue_signals(model, histories(), cloud_views(), (name,), K, MAX_LEN)
        assert list(alone) == [name]
        torch.testing.assert_close(alone[name], together[name])
    assert not together["drift"].equal(together["confidence"])
    assert catalogue_signals(model, histories(), cloud_views(), (), K, MAX_LEN) == {}
    with pytest.raises(ValueError, match=r"unknown catalogue signals \['kendall'\]"):
        catalogue_signals(model, histories(), cloud_views(), ("kendall",), K, MAX_LEN)


def test_catalogue_signals_score_each_view_once_per_batch(
    model: SequentialRecommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counted(*args: object) -> torch.Tensor:
        calls.append(1)
        return catalogue_scores(*args)

    monkeypatch.setattr(clients.inference, "catalogue_scores", counted)
    for names, passes in ((CATALOGUE_SIGNALS, 2), (("confidence",), 1), (("drift", "drift"), 2)):
        calls.clear()
        catalogue_signals(model, histories(), cloud_views(), names, K, MAX_LEN)
        assert len(calls) == passes, names  # 4 users: one batch; the cloud view only for drift
    calls.clear()
    infer(model, np.array([5, 15, 25, 39]), measures=("kendall",))
    assert calls == []  # order signals read the list, never the catalogue
    with pytest.raises(TypeError, match="not a string"):
        catalogue_signals(model, histories(), cloud_views(), "drift", K, MAX_LEN)


def test_collaborative_inference_refuses_a_grid_without_both_ends(model: SequentialRecommender) -> None:
    """Fused's margins over SRM-only and LLM-only are summed against the grid's first and last α."""
    with pytest.raises(ValueError, match="alphas must run from 0"):
        infer(model, np.array([5, 15, 25, 39]), (0.0, 0.5))
    with pytest.raises(ValueError, match="alphas must run from 0"):
        infer(model, np.array([5, 15, 25, 39]), (1.0, 0.0))


def test_collaborative_inference_bins_drift_by_default(model: SequentialRecommender) -> None:
    outcomes = infer(model, np.array([5, 15, 25, 39]), (0.0, 0.5, 1.0), bins=4, tau=0.25)  # no measures named
    assert list(outcomes) == ["drift"]
    outcome = outcomes["drift"]
    drift = signals(model, cloud_views())["drift"].numpy()
    assert outcome.bin_count.tolist() == np.histogram(drift, bins=4, range=(0, 1))[0].tolist()
    assert outcome.requests == int((drift >= 0.25).sum())


def test_collaborative_inference_bins_the_same_rankings_by_every_signal(model: SequentialRecommender) -> None:
    targets = np.array([5, 15, 25, 39])
    outcomes = infer(model, targets, (0.0, 0.5, 1.0), MEASURES, bins=4, tau=0.05, live="kendall")
    assert list(outcomes) == list(MEASURES)
    for measure, outcome in outcomes.items():
        alone = infer(model, targets, (0.0, 0.5, 1.0), (measure,), bins=4, tau=0.05)[measure]
        np.testing.assert_allclose(outcome.stale_ndcg, alone.stale_ndcg)
        np.testing.assert_allclose(outcome.bin_count, alone.bin_count)
        np.testing.assert_allclose(outcome.bin_fresh_ndcg, alone.bin_fresh_ndcg)
        assert outcome.requests == (alone.requests if measure == "kendall" else 0)  # only the live gate asks
    assert outcomes["drift"].bin_count.tolist() != outcomes["kendall"].bin_count.tolist()
    with pytest.raises(ValueError, match="live signal 'topk' must be one of"):
        infer(model, targets, measures=("drift",), live="topk")


@pytest.mark.parametrize("k", [None, NUM_ITEMS + 10])  # a K beyond the catalogue crashed the node's fallback
def test_a_list_the_cloud_never_delivered_ranks_in_the_srms_order_at_every_alpha(
    federation_config: RunConfig, k: int | None
) -> None:
    """With the service down, the stale list is the SRM's top-K; α = 1 must not tie it (a tie ranks last)."""
    cfg = federation_config.override(
        [f"federation.service_url=http://127.0.0.1:{free_port()}", *([f"llm.k={k}"] if k else [])]
    )
    node = load_node(cfg.data, cfg.seed, 0, 4)
    device, cloud, _ = node.views("test")
    personal = build_srm(cfg.srm, node.num_items).eval()  # as adaptive re-training leaves it
    stale = _stale_lists(cfg, node, ListCache(), personal, device, cloud)
    assert stale.missing.all()
    srm = srm_list_scores(personal, device, torch.from_numpy(stale.items), cfg.srm.max_len)
    in_list_order = torch.arange(stale.items.shape[1]).expand(len(device), -1)
    for alpha in (0.0, 0.5, 1.0):
        fused = fuse(torch.from_numpy(stale.scores), srm, alpha)
        for position in (0, 3):  # the target at the list's position p ranks p, whatever α
            ranks = scored_list_ranks(fused, stale.items, stale.items[:, position])
            assert ranks.tolist() == in_list_order[:, position].double().tolist()
