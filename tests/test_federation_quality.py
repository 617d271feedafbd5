"""benchmarks/federation_quality.py: the issue's checks and the floors beside each row, on a hand-made report."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from safetensors.torch import save_file

from clients.srm import build_srm
from lsc4rec.config import RunConfig
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.data.split import TemporalSplit
from lsc4rec.errors import ConfigError
from lsc4rec.metrics import ndcg_per_user
from lsc4rec.scoring import evaluate_full, full_catalogue_ranks
from server.checkpoint import save_checkpoint
from server.report import save_final_sums
from tests.conftest import BLEND_WITHIN_A_SE, final_sums, load_benchmark, outcome_from_users


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
        "fused margins": {
            "over SRM-only": {"ndcg@10": 0.028 - 0.027, "paired se": 0.0004},
            "over LLM-only": {"ndcg@10": 0.028 - 0.016, "paired se": 0.0009},
        },
    }


def by_row(rows: list[dict]) -> dict[str, dict]:
    return {r["row"]: r for r in rows}


def check_rows(rows: list[dict]) -> dict[str, dict]:
    """Checks 1 and 4 by their first words: "check: fused >=" and "check: fused at"."""
    return {" ".join(r["row"].split()[:3]): r for r in rows if r["row"].startswith("check:")}


def test_each_row_stands_beside_the_floors_of_the_views_it_reads() -> None:
    rows = by_row(load_benchmark("federation_quality").rows_for("beauty", report(0.1, 0.029), central=0.047))
    both = {"transition floor, cloud view": 0.0138, "transition floor, device view": 0.0438}
    assert both.items() <= rows["fused (stale list)"].items()
    assert both.items() <= next(r for key, r in rows.items() if key.startswith("budget 5%")).items()
    assert {"popularity floor, cloud view": 0.0040, "popularity floor, device view": 0.0041}.items() <= rows[
        "fused (fresh list)"
    ].items()
    # the federated SRM ranks the catalogue from the device view alone
    srm = rows["federated SRM, full catalogue (round 12, best validation)"]
    assert "transition floor, cloud view" not in srm and srm["transition floor, device view"] == 0.0438


def test_checks_three_and_four_read_the_validation_round_and_beautys_target() -> None:
    benchmark = load_benchmark("federation_quality")
    rows = by_row(benchmark.rows_for("beauty", report(0.1, 0.029), central=0.047))
    assert rows["federated SRM, full catalogue (round 12, best validation)"]["pass"]  # 0.043 / 0.047 = 91 %
    assert "pass" not in rows["federated SRM, full catalogue (final round 14)"]
    check_4 = check_rows(list(rows.values()))["check: fused at"]
    assert check_4["pass"] and check_4["ndcg@10"] == pytest.approx(0.029 + 0.005)
    short = by_row(benchmark.rows_for("beauty", report(0.1, 0.020), central=0.050))
    assert not short["federated SRM, full catalogue (round 12, best validation)"]["pass"]  # 86 %
    assert not check_rows(list(short.values()))["check: fused at"]["pass"]  # 0.0250 < 0.0264
    # above the target, but not above the stale transition floor: lost
    high_floor = report(0.1, 0.029)
    high_floor["floors"]["item-transition"]["stale"]["ndcg@10"] = 0.040
    assert not check_rows(benchmark.rows_for("beauty", high_floor, None))["check: fused at"]["pass"]
    movielens = benchmark.rows_for("ml-latest-small", report(0.1, 0.029), central=None)
    assert "check: fused at" not in check_rows(movielens)  # Beauty's target only
    assert not [r for r in movielens if "pass" in r and r["row"].startswith("federated SRM")]  # no central


@pytest.mark.parametrize(
    ("alpha", "note"), [(0.0, "fused is SRM-only"), (1.0, "fused is LLM-only"), (0.3, "")]
)
def test_check_one_says_when_the_chosen_alpha_makes_fused_one_of_the_two(alpha: float, note: str) -> None:
    rows = load_benchmark("federation_quality").rows_for("beauty", report(alpha, 0.029), None)
    check_1 = check_rows(rows)["check: fused >="]
    assert check_1["alpha"] == alpha and check_1["pass"]  # fused 0.028 >= SRM 0.027 >= LLM 0.016
    assert note in check_1["row"] and ("(α" in check_1["row"]) == bool(note)


def test_the_printed_table_has_a_column_for_every_figure_of_every_row() -> None:
    benchmark = load_benchmark("federation_quality")
    rows = benchmark.rows_for("beauty", report(0.3, 0.029), central=0.047)
    # the dataset names each printed table rather than a column
    assert {key for row in rows for key in row} == set(benchmark.COLUMNS) | {"dataset"}
    parts = {row["row"]: benchmark.part_of(row) for row in rows}
    assert (
        len(set(parts.values())) == 3
        and parts["fused (stale list)"] != parts["check: fused >= max(LLM, SRM)"]
    )


def test_check_one_shows_the_margin_over_the_stronger_row_with_its_paired_se() -> None:
    benchmark = load_benchmark("federation_quality")
    check_1 = check_rows(benchmark.rows_for("beauty", report(0.3, 0.029), None))["check: fused >="]
    assert (
        check_1["margin"] == pytest.approx(0.001) and check_1["paired se"] == 0.0004
    )  # SRM-only is stronger
    llm_stronger = report(0.3, 0.029)
    llm_stronger["rankings"][0]["ndcg@10"] = 0.0275  # LLM-only on the stale list
    llm_stronger["fused margins"]["over LLM-only"] = {"ndcg@10": 0.028 - 0.0275, "paired se": 0.0009}
    check_1 = check_rows(benchmark.rows_for("beauty", llm_stronger, None))["check: fused >="]
    assert check_1["margin"] == pytest.approx(0.0005) and check_1["paired se"] == 0.0009


def test_a_report_from_before_the_random_sd_reads(tmp_path) -> None:
    """Run folders from before 2026-12-02 lack the random sd (and before 2026-12-06 the paired se): both read."""
    old = report(0.1, 0.029)
    for p in old["policies"]:
        del p["random sd at gated rate"]
    del old["fused margins"]
    rows = load_benchmark("federation_quality").rows_for("beauty", old, None)
    assert all(r.get("random sd") is None and r.get("paired se") is None for r in rows)
    assert sum(r["row"].startswith("check:") for r in rows) == 5  # checks 1, 2 at three rates, 4


def test_the_central_srm_of_the_federations_settings_gives_the_ratio(
    caplog: pytest.LogCaptureFixture,
) -> None:
    benchmark = load_benchmark("federation_quality")
    cfg = RunConfig().override(["data.dataset=beauty", "seed=1"])
    row = {"dataset": "beauty", "model": "sasrec-ce", "ndcg@10": 0.047, **cfg.evaluation(), "users": 900}
    other_seed = {**row, "seed": 0, "ndcg@10": 0.050}
    assert benchmark.central_row([row, other_seed], cfg, 900) == row  # the matching one, wherever it stands
    assert benchmark.central_row([other_seed], cfg, 900) is None
    assert "'seed': 0" in caplog.text and "ratio is left out" in caplog.text
    assert benchmark.central_row([row], cfg, 22363) is None  # evaluated on 900 sampled users, not on all
    older = {"dataset": "beauty", "model": "sasrec-ce", "ndcg@10": 0.046}  # written before rows named a seed
    assert benchmark.central_row([older], cfg, 900) == older and "does not say its seed, kcore" in caplog.text
    assert benchmark.central_row([], cfg, 900) is None


def test_check_three_is_a_paired_margin_over_90_percent_of_central(
    federation_config: RunConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The validation-chosen round and the central SRM rank the same users: the margin's se is their differences'."""
    benchmark = load_benchmark("federation_quality")
    cfg = federation_config
    split = TemporalSplit(load_or_prepare(cfg.data, cfg.seed), cfg.data.lag)
    torch.manual_seed(0)
    rounds = {
        3: build_srm(cfg.srm, split.dataset.num_items).eval(),
        4: build_srm(cfg.srm, split.dataset.num_items),
    }
    central = build_srm(cfg.srm, split.dataset.num_items).eval()
    run_dir, central_dir = tmp_path / "federation", tmp_path / "central"
    for r, model in rounds.items():
        save_checkpoint(run_dir, r, ArrayRecord(model.eval().state_dict()), tau=1.0)
    central_dir.mkdir()
    cfg.save(central_dir / "config.json")
    save_file(central.state_dict(), central_dir / "model.safetensors")
    test = {  # as the central SRM's row and the ratio's federated figure are computed
        name: evaluate_full(model, split, "test", cfg.srm.max_len, cutoffs=(10,))["ndcg@10"]
        for name, model in (*rounds.items(), ("central", central))
    }
    assert test[3] != test[4]  # so that a margin taken from the other round would show
    row = {"ndcg@10": test["central"], "run": str(central_dir)}
    got = benchmark.global_srm_figures(cfg, split, run_dir, 0, row)
    chosen = got["best-validation round"]
    assert got["best-validation test ndcg@10"] == pytest.approx(test[chosen])
    assert got["check 3 margin"] == pytest.approx(test[chosen] - 0.9 * test["central"])
    test_views, targets = split.views("test", "device"), split.targets("test")
    per_user = {
        name: ndcg_per_user(full_catalogue_ranks(model, test_views, targets, cfg.srm.max_len), 10)
        for name, model in (("chosen", rounds[chosen]), ("central", central))
    }
    diff = per_user["chosen"] - 0.9 * per_user["central"]
    assert got["check 3 paired se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(split.num_users))
    assert got["check 3 paired se"] > 0 and "--central" not in caplog.text
    # no central row: the ratio alone
    assert "check 3 margin" not in benchmark.global_srm_figures(cfg, split, run_dir, 0)
    # without a readable central folder, or where the folder's model is not the row's, the ratio stands alone
    left_out = [
        ({**row, "run": str(tmp_path / "gone")}, "paired standard error is left out"),
        ({"ndcg@10": test["central"]}, "its row names no run folder"),
        ({**row, "ndcg@10": test["central"] + 0.01}, "over every user, its row"),
    ]
    for damaged, message in left_out:
        assert benchmark.check_three_margin(cfg, split, per_user["chosen"], damaged) == {}
        assert message in caplog.text


def test_check_three_shows_its_paired_margin_when_computed() -> None:
    benchmark = load_benchmark("federation_quality")
    final = report(0.1, 0.029)
    final["global SRM, central protocol"] |= {"check 3 margin": 0.0007, "check 3 paired se": 0.0011}
    row = by_row(benchmark.rows_for("beauty", final, central=0.047))[
        "federated SRM, full catalogue (round 12, best validation)"
    ]
    assert (row["margin"], row["paired se"], row["pass"]) == (0.0007, 0.0011, True)


def test_a_finished_runs_table_is_computed_from_its_saved_sums_under_the_margin_set(tmp_path) -> None:
    """Validation's best blend is within one paired se of SRM-only: served at margin 1, not at 0."""
    RunConfig().override(["federation.measure=drift"]).save(tmp_path / "config.json")
    (tmp_path / "final.json").write_text(json.dumps(report(0.1, 0.03)))  # as written, α 0.1
    outcome = outcome_from_users(np.full(4, 0.5), BLEND_WITHIN_A_SE, BLEND_WITHIN_A_SE, bins=50)
    sums = final_sums(outcome)
    save_final_sums(tmp_path, sums, report(0.1, 0.03)["floors"], {}, "drift", {"dataset": "d"})
    bench = load_benchmark("federation_quality")
    for overrides, margin, alpha in (([], 1.0, 0.0), (["federation.alpha_margin_se=0"], 0.0, 0.5)):
        cfg, final = bench.finished_report(tmp_path, overrides)
        assert cfg.federation.alpha_margin_se == margin and final["alpha"] == alpha
    # a run from before the sums (and the margin, which its config.json lacks): read as it was written, by the
    # rule it chose with, and no other margin
    (tmp_path / "final-sums.json").unlink()
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["federation"]["alpha_margin_se"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg, final = bench.finished_report(tmp_path, [])
    assert cfg.federation.alpha_margin_se == 0.0 and final["alpha"] == 0.1
    with pytest.raises(ConfigError, match=r"--set: needs the run's final-sums\.json"):
        bench.finished_report(tmp_path, ["federation.alpha_margin_se=1"])
