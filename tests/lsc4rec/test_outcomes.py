"""Tests of the mergeable collaborative-inference outcome and the request-policy curves drawn from it."""

from dataclasses import replace
from itertools import combinations

import numpy as np
import pytest
from flwr.app import MetricRecord

from lsc4rec.outcomes import (
    LLM_ONLY,
    SRM_ONLY,
    StageOutcome,
    budget_point,
    choice_budgets,
    choose_measure,
    gated_policy,
    paired_se,
    random_policy,
    random_spread,
    signal_comparison,
    threshold_for_budget,
)
from tests.conftest import ALPHAS, BLEND_WITHIN_A_SE, outcome_from_users, two_signals


def random_users(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    score = (rng.permutation(1000)[:n] + 0.5) / 1000  # distinct, one per bin of a 1000-bin histogram
    stale = rng.uniform(size=(n, len(ALPHAS))) * (rng.uniform(size=(n, 1)) < 0.3)
    fresh = rng.uniform(size=(n, len(ALPHAS))) * (rng.uniform(size=(n, 1)) < 0.6)
    return score, stale, fresh


def test_threshold_for_budget_uniform_histogram_meets_budget() -> None:
    edges = np.linspace(0.0, 1.0, 51)
    assert threshold_for_budget(np.full(50, 10.0), edges, 0.05) == pytest.approx(0.95)
    assert threshold_for_budget(np.full(50, 10.0), edges, 0.2) == pytest.approx(0.8)


def test_threshold_for_budget_hand_histogram_interpolates_and_takes_highest_tau() -> None:
    counts, edges = np.array([4.0, 0.0, 2.0, 2.0]), np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    assert threshold_for_budget(counts, edges, 0.25) == pytest.approx(0.75)
    assert threshold_for_budget(counts, edges, 0.375) == pytest.approx(0.625)  # half of bin 2 above
    assert threshold_for_budget(counts, edges, 0.5) == pytest.approx(0.5)  # bin 1 empty: highest tau
    assert threshold_for_budget(counts, edges, 0.75) == pytest.approx(0.125)


def test_threshold_for_budget_extremes_never_and_always() -> None:
    counts, edges = np.array([0.0, 3.0, 0.0]), np.linspace(0.0, 1.0, 4)
    assert threshold_for_budget(counts, edges, 0.0) == 1.0
    assert threshold_for_budget(counts, edges, 1.0) < 0.0
    assert threshold_for_budget(np.zeros(3), edges, 0.3) == 1.0
    with pytest.raises(ValueError, match="budget must be in"):
        threshold_for_budget(counts, edges, 1.5)


def test_gated_policy_fine_bins_equals_brute_force_per_user() -> None:
    score, stale, fresh = random_users(200, seed=0)
    outcome = outcome_from_users(score, stale, fresh, bins=1000)
    order = np.argsort(-score)
    for budget in (0.0, 0.05, 0.1, 0.2, 0.5, 1.0):
        asked = order[: round(budget * len(score))]
        for a in range(len(ALPHAS)):
            expected = stale[:, a].copy()
            expected[asked] = fresh[asked, a]
            tau = threshold_for_budget(outcome.bin_count, outcome.bin_edges, budget)
            rate, ndcg = gated_policy(outcome, a, tau)
            assert rate == pytest.approx(budget)
            assert ndcg == pytest.approx(expected.mean())


def test_gated_policy_coarse_bins_splits_boundary_bin_proportionally() -> None:
    # Two bins: 2 users in [0, .5) with gain 0, 2 users in [.5, 1] with total gain 1.
    score = np.array([0.1, 0.2, 0.6, 0.9])
    stale = np.zeros((4, 3))
    fresh = np.array([[0.0] * 3, [0.0] * 3, [0.4] * 3, [0.6] * 3])
    outcome = outcome_from_users(score, stale, fresh, bins=2)
    rate, ndcg = gated_policy(outcome, 1, 0.75)  # half of the top bin: half its gain
    assert rate == pytest.approx(0.25) and ndcg == pytest.approx(0.5 / 4)


def test_random_policy_interpolates_stale_and_fresh_means() -> None:
    score, stale, fresh = random_users(50, seed=1)
    outcome = outcome_from_users(score, stale, fresh, bins=10)
    expected = 0.8 * stale[:, 2].mean() + 0.2 * fresh[:, 2].mean()
    assert random_policy(outcome, 2, 0.2) == pytest.approx(expected)


def test_random_spread_is_the_spread_of_random_request_sets() -> None:
    score, stale, fresh = random_users(40, seed=2)
    outcome = outcome_from_users(score, stale, fresh, bins=10)
    rng = np.random.default_rng(0)  # random requests by 8 of the 40 users, drawn many times
    draws = [
        (stale[:, 1].sum() + (fresh - stale)[rng.permutation(40)[:8], 1].sum()) / 40 for _ in range(20000)
    ]
    assert random_spread(outcome, 1, 0.2) == pytest.approx(np.std(draws), rel=0.03)
    assert np.mean(draws) == pytest.approx(random_policy(outcome, 1, 0.2), abs=1e-3)
    # no users request, or all do: no spread; with a single user there is nothing to draw from
    assert random_spread(outcome, 1, 0.0) == 0.0 and random_spread(outcome, 1, 1.0) == pytest.approx(0.0)
    assert random_spread(outcome_from_users(score[:1], stale[:1], fresh[:1], bins=10), 1, 0.5) == 0.0


def test_paired_se_is_the_standard_error_of_the_per_user_differences() -> None:
    score, stale, fresh = random_users(50, seed=4)
    parts = [outcome_from_users(score[s], stale[s], fresh[s], bins=10) for s in (slice(0, 20), slice(20, 50))]
    merged = StageOutcome.sum(parts)  # what the server holds: the nodes' sums, added
    for end in (0, -1):
        differences = stale[:, 1] - stale[:, end]
        expected = np.std(differences, ddof=1) / np.sqrt(50)
        assert paired_se(merged, 1, end) == pytest.approx(expected)
    assert paired_se(merged, 0, 0) == 0.0  # SRM-only against itself
    assert np.isnan(paired_se(outcome_from_users(score[:1], stale[:1], fresh[:1], bins=10), 1, 0))
    with pytest.raises(ValueError, match="against must be 0"):
        paired_se(merged, 1, 1)


def test_stage_outcome_merge_is_addition_of_user_sets() -> None:
    score, stale, fresh = random_users(60, seed=2)
    parts = [outcome_from_users(score[s], stale[s], fresh[s], bins=10) for s in (slice(0, 25), slice(25, 60))]
    whole = outcome_from_users(score, stale, fresh, bins=10)
    merged = StageOutcome.sum(parts)
    assert merged.users == 60 and merged.requests == whole.requests
    for name in ("stale_ndcg", "fresh_hr", "bin_count", "bin_stale_ndcg", "bin_fresh_ndcg"):
        np.testing.assert_allclose(getattr(merged, name), getattr(whole, name))
    assert merged.fresh_recall == whole.fresh_recall
    assert parts[0].users == 25  # merging leaves its inputs alone


def test_stage_outcome_merge_mismatched_bins_raises() -> None:
    score, stale, fresh = random_users(10, seed=3)
    with pytest.raises(ValueError, match="must share alphas and bin edges"):
        outcome_from_users(score, stale, fresh, 10).merge(outcome_from_users(score, stale, fresh, 5))


def test_stage_outcome_metrics_round_trip_through_flower_record() -> None:
    score, stale, fresh = random_users(30, seed=4)
    outcome = outcome_from_users(score, stale, fresh, bins=10)
    metrics = outcome.to_metrics("valid")
    assert "valid-stale-ndcg" in metrics and "valid-bin-fresh-ndcg" in metrics
    record = MetricRecord({**metrics, "num-examples": 30})  # accepted by Flower as-is
    back = StageOutcome.from_metrics(record, "valid")
    assert back.alphas == ALPHAS and back.users == 30 and back.requests == outcome.requests
    for name in (
        "stale_hr",
        "gain_sq",
        "pair_sq_first",
        "pair_sq_last",
        "bin_count",
        "bin_stale_ndcg",
        "bin_edges",
    ):
        np.testing.assert_allclose(getattr(back, name), getattr(outcome, name))
    # a round's line written before 2026-12-06 lacks the paired squares: read back as unknown
    older = {k: v for k, v in record.items() if "pair-sq" not in k}
    assert np.isnan(paired_se(StageOutcome.from_metrics(older, "valid"), 1, 0))


def test_stage_outcome_means_and_best_alpha_use_stale_ndcg() -> None:
    score = np.array([0.1, 0.9])
    stale = np.array([[0.1, 0.5, 0.3], [0.1, 0.3, 0.2]])
    fresh = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    outcome = outcome_from_users(score, stale, fresh, bins=4)
    np.testing.assert_allclose(outcome.means()["stale-ndcg"], [0.1, 0.4, 0.25])
    assert outcome.best_alpha() == 1


def test_chosen_alpha_serves_a_blend_only_where_it_beats_the_better_model_beyond_the_margin() -> None:
    """Four users; the blend (α 0.5) beats the better single model by 0.1 with a paired se of 0.129."""
    score, fresh = np.full(4, 0.5), np.zeros((4, len(ALPHAS)))
    srm_wins = outcome_from_users(score, BLEND_WITHIN_A_SE, fresh, bins=2)
    llm_wins = outcome_from_users(score, BLEND_WITHIN_A_SE[:, ::-1], fresh, bins=2)
    for outcome, single, against in ((srm_wins, 0, SRM_ONLY), (llm_wins, 2, LLM_ONLY)):
        assert outcome.best_alpha() == 1
        assert paired_se(outcome, 1, against) == pytest.approx(np.sqrt(0.2 / 3 / 4))  # 0.1291
        assert outcome.chosen_alpha(1.0) == single  # 0.1 is within one se: the better single model
        assert outcome.chosen_alpha(0.7) == 1  # beyond 0.7 se (0.0904): the blend
        assert outcome.chosen_alpha(0.0) == 1  # no margin: validation's best
        unrecorded = replace(outcome, pair_sq_first=np.full(3, np.nan), pair_sq_last=np.full(3, np.nan))
        assert unrecorded.chosen_alpha(1.0) == 1  # a run without the squares: its best, as it chose then
    # the two single models level: SRM-only, the first α, as the best α takes the first on a tie
    level = BLEND_WITHIN_A_SE.copy()
    level[:, 2] = level[:, 0]
    assert outcome_from_users(score, level, fresh, bins=2).chosen_alpha(1.0) == 0
    # the best a single model: served whatever the margin
    alone = outcome_from_users(score, BLEND_WITHIN_A_SE[:, [0, 2, 1]], fresh, bins=2)
    assert alone.chosen_alpha(1.0) == alone.chosen_alpha(5.0) == 2
    # the signals are read at the α served
    valid = two_signals(bins=4)
    assert choose_measure(valid, 0.25, 1.0) == "1" and choose_measure(valid, 0.25, 0.0) == "0"
    assert [r["alpha"] for r in signal_comparison(valid, valid, 1.0, budgets=(0.25,))] == [0.0, 0.0]
    assert [r["alpha"] for r in signal_comparison(valid, valid, 0.0, budgets=(0.25,))] == [0.5, 0.5]


def test_budget_point_is_gate_at_label_free_tau_against_random_at_its_rate() -> None:
    """Ten users, one per bin; a fresh list helps the two with the highest signal (0.9 and 0.7 over 0.1)."""
    score = np.arange(10) / 10 + 0.05  # 0.05, 0.15, ..., 0.95
    stale = np.full((10, len(ALPHAS)), 0.1)
    fresh = stale.copy()
    fresh[8:, 1] = [0.9, 0.7]
    point = budget_point(outcome_from_users(score, stale, fresh, bins=10), 1, 0.2)
    assert point.tau == pytest.approx(0.8)  # the two highest scores lie above it
    assert point.rate == pytest.approx(0.2)
    assert point.gated == pytest.approx((8 * 0.1 + 0.9 + 0.7) / 10)  # 0.24
    assert point.random == pytest.approx(0.8 * 0.1 + 0.2 * 0.24)  # a random fifth gets the mean fresh list
    assert point.gain == pytest.approx(0.24 - 0.128)
    # the spread over every random pair of requesters (rate 0.2 of 10 users), listed one by one
    means = [
        (stale[:, 1].sum() + (fresh - stale)[list(pair), 1].sum()) / 10 for pair in combinations(range(10), 2)
    ]
    assert point.spread == pytest.approx(np.std(means)) and point.spread > 0


def test_choose_measure_picks_the_signal_that_ranks_the_gainers_first() -> None:
    # 100 users; a fresh list helps only the first ten. Signal "good" scores them highest, "bad" lowest.
    rng = np.random.default_rng(6)
    stale = np.zeros((100, len(ALPHAS)))
    fresh = np.zeros((100, len(ALPHAS)))
    fresh[:10] = 1.0
    good = np.concatenate([rng.uniform(0.9, 1.0, 10), rng.uniform(0.0, 0.8, 90)])
    bad = 1.0 - good
    valid = {
        name: outcome_from_users(score, stale, fresh, bins=50)
        for name, score in (("bad", bad), ("good", good))
    }
    assert choose_measure(valid, 0.1, 1.0) == "good"
    assert budget_point(valid["good"], 0, 0.1).gain > 0 > budget_point(valid["bad"], 0, 0.1).gain
    assert (
        choose_measure(valid, 0.0, 1.0) == "bad"
    )  # no requests: every signal gains nothing, the first one stays
    with pytest.raises(ValueError, match="at least one signal"):
        choose_measure({}, 0.1, 1.0)


def test_choose_measure_sums_the_budget_its_double_and_quadruple() -> None:
    """ "lucky" puts 5 of the 20 gainers first and the rest last; "broad" puts 18 of them in its first 20."""
    stale, fresh = np.zeros((100, len(ALPHAS))), np.zeros((100, len(ALPHAS)))
    fresh[:20] = 1.0  # users 0-19 gain from a fresh list
    order = {  # users from the highest signal down
        "lucky": [0, 1, 2, 3, 4, *range(20, 100), *range(5, 20)],
        "broad": [
            0,
            1,
            2,
            3,
            20,
            4,
            5,
            6,
            7,
            8,
            9,
            10,
            11,
            12,
            13,
            14,
            15,
            21,
            16,
            17,
            *range(22, 100),
            18,
            19,
        ],
    }
    valid = {}
    for name, users in order.items():
        score = np.empty(100)
        score[users] = (99 - np.arange(100) + 0.5) / 100  # one user per bin of 100
        valid[name] = outcome_from_users(score, stale, fresh, bins=100)
    assert choice_budgets(0.05) == (0.05, 0.1, 0.2) and choice_budgets(0.5) == (0.5, 1.0)
    gain = {m: [budget_point(o, 0, b).gain for b in (0.05, 0.1, 0.2)] for m, o in valid.items()}
    assert gain["lucky"] == pytest.approx([0.04, 0.03, 0.01]) and gain["broad"] == pytest.approx(
        [0.03, 0.07, 0.14]
    )
    assert gain["lucky"][0] > gain["broad"][0]  # at the budget alone "lucky" wins ...
    assert choose_measure(valid, 0.05, 1.0) == "broad"  # ... but not across the budgets around it


def test_signal_comparison_puts_each_signal_at_each_budget_on_both_stages() -> None:
    score, stale, fresh = random_users(60, seed=3)
    valid = {"a": outcome_from_users(score, stale, fresh, bins=20)}
    valid["b"] = outcome_from_users(1.0 - score, stale, fresh, bins=20)
    test = {
        m: outcome_from_users(1.0 - s, fresh, stale, bins=20) for m, s in (("a", score), ("b", 1.0 - score))
    }
    rows = signal_comparison(valid, test, 0.0, budgets=(0.1, 0.2))
    assert [(r["signal"], r["budget"]) for r in rows] == [("a", 0.1), ("a", 0.2), ("b", 0.1), ("b", 0.2)]
    alpha = valid["a"].best_alpha()  # validation's α, applied to test too
    for row in rows:
        assert row["alpha"] == ALPHAS[alpha]
        for stage, outcomes in (("valid", valid), ("test", test)):
            point = budget_point(outcomes[row["signal"]], alpha, row["budget"])
            assert (row[f"{stage} gain"], row[f"{stage} random sd"]) == (point.gain, point.spread)
