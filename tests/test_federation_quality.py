"""benchmarks/federation_quality.py: the issue's checks and the floors beside each row, on a hand-made report."""

import pytest

from lsc4rec.config import RunConfig
from tests.conftest import load_benchmark


def report(alpha: float, gated_at_5: float) -> dict:
    """A final.json as the ServerApp writes it, with round figures; the device view's floor beats the system."""
    floors = {
        "item-transition": {"stale": {"ndcg@10": 0.0138}, "fresh": {"ndcg@10": 0.0438}},
        "most-popular": {"stale": {"ndcg@10": 0.0040}, "fresh": {"ndcg@10": 0.0041}},
    }
    rankings = [
        {"ranking": name, "list": lst, "alpha": a, "ndcg@10": value, "hr@10": 2 * value}
        for lst in ("stale", "fresh")
        for name, a, value in (("LLM-only", 1.0, 0.016), ("SRM-only", 0.0, 0.027), ("fused", alpha, 0.028))
    ]
    policies = [
        {
            "budget": budget,
            "gated rate": budget,
            "gated ndcg@10": gated_at_5 + budget / 10,
            "random ndcg@10 at gated rate": 0.028 + budget / 20,
            "random sd at gated rate": 0.0002,
        }
        for budget in (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
    ]
    rounds = {"final round": 14, "best-validation round": 12}
    srm = {
        f"{key} {stage} ndcg@10": 0.043 for key in ("final", "best-validation") for stage in ("test", "valid")
    }
    return {
        "alpha": alpha,
        "floors": floors,
        "rankings": rankings,
        "policies": policies,
        "request signal": "confidence",
        "protocol": {"measure": "auto"},
        "global SRM, central protocol": rounds | srm,
    }


def by_row(rows: list[dict]) -> dict[str, dict]:
    return {r["row"]: r for r in rows}


def test_each_row_stands_beside_the_floors_of_the_views_it_reads() -> None:
    rows = by_row(load_benchmark("federation_quality").rows_for("beauty", report(0.1, 0.029), central=0.047))
    fused = rows["fused (stale list)"]
    assert (fused["transition floor, cloud"], fused["transition floor, device"]) == (0.0138, 0.0438)
    # a policy row's cloud floor is served at its budget; the device's own floor needs no request
    at_5 = next(r for key, r in rows.items() if key.startswith("budget 5%"))
    assert at_5["transition floor, cloud"] == pytest.approx(0.95 * 0.0138 + 0.05 * 0.0438)
    assert at_5["transition floor, device"] == 0.0438
    # the federated SRM ranks the catalogue from the device view alone
    srm = rows["federated SRM, full catalogue (round 12, best validation)"]
    assert "transition floor, cloud" not in srm and srm["transition floor, device"] == 0.0438


def test_checks_three_and_four_read_the_validation_round_and_beautys_target() -> None:
    benchmark = load_benchmark("federation_quality")
    rows = by_row(benchmark.rows_for("beauty", report(0.1, 0.029), central=0.047))
    assert rows["federated SRM, full catalogue (round 12, best validation)"]["pass"]  # 0.043 / 0.047 = 91 %
    assert "pass" not in rows["federated SRM, full catalogue (final round 14)"]
    check_4 = next(r for key, r in rows.items() if key.startswith("check: fused at 5 %"))
    assert check_4["pass"] and check_4["ndcg@10"] == pytest.approx(0.029 + 0.005)
    short = by_row(benchmark.rows_for("beauty", report(0.1, 0.020), central=0.050))
    assert not short["federated SRM, full catalogue (round 12, best validation)"]["pass"]  # 86 %
    assert not next(r for key, r in short.items() if key.startswith("check: fused at 5 %"))["pass"]
    movielens = benchmark.rows_for("ml-latest-small", report(0.1, 0.029), central=None)
    assert not [r for r in movielens if r["row"].startswith("check: fused at 5 %")]  # Beauty's target only
    assert not [r for r in movielens if "pass" in r and r["row"].startswith("federated SRM")]  # no central


def test_check_one_says_when_the_chosen_alpha_makes_it_a_tie() -> None:
    benchmark = load_benchmark("federation_quality")
    tie = [
        r
        for r in benchmark.rows_for("beauty", report(0.0, 0.029), None)
        if r["row"].startswith("check: fused >=")
    ]
    real = [
        r
        for r in benchmark.rows_for("beauty", report(0.3, 0.029), None)
        if r["row"].startswith("check: fused >=")
    ]
    assert "a tie by construction" in tie[0]["row"] and tie[0]["alpha"] == 0.0
    assert "tie" not in real[0]["row"] and real[0]["alpha"] == 0.3 and real[0]["pass"]


def test_a_central_srm_of_other_settings_gives_no_ratio(caplog: pytest.LogCaptureFixture) -> None:
    benchmark = load_benchmark("federation_quality")
    cfg = RunConfig().override(["data.dataset=beauty", "seed=1"])
    row = {"dataset": "beauty", "model": "sasrec-ce", "ndcg@10": 0.047, **cfg.evaluation()}
    assert benchmark.central_ndcg(row, cfg) == 0.047
    assert benchmark.central_ndcg({**row, "seed": 0}, cfg) is None
    assert (
        "evaluated with {'dataset': 'beauty', 'seed': 0" in caplog.text and "ratio is left out" in caplog.text
    )
    older = {"dataset": "beauty", "model": "sasrec-ce", "ndcg@10": 0.047}  # written before rows named a seed
    assert benchmark.central_ndcg(older, cfg) == 0.047 and benchmark.central_ndcg(None, cfg) is None
