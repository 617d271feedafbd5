"""Federation quality on the paper protocol: LLM-only, SRM-only, fused, and request policies, beside the floors.

Protocol (the configs' recipe; each run's own is in the JSON's ``runs``): lag 2, K = 50, SASRec, random item
numbering, 5-core; fusion weight α chosen on validation; the request threshold calibrated on the label-free
histogram of the request signal; test figures rank over the candidate list. The real ServerApp and ClientApp run over the in-process grid (the same messages and strategies as
``flwr run``, without Ray's start-up), against the real candidate service on 127.0.0.1. Each dataset runs with
the settings of ``configs/bench-DATASET.toml`` (the README's commands run the same files), then ``--set``. Example:

    python benchmarks/federation_quality.py --datasets ml-latest-small beauty --json runs/bench/federation.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from clients.app import app as client_app
from clients.central import evaluation_users, load_central_srm
from clients.srm import SequentialRecommender
from lsc4rec.config import RunConfig, load_config, set_key
from lsc4rec.data.partition import fleet_size
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.data.split import TemporalSplit
from lsc4rec.errors import ConfigError, run_main
from lsc4rec.metrics import ndcg_per_user
from lsc4rec.scoring import evaluate_full, full_catalogue_ranks
from lsc4rec.tables import bench_settings, dataset_name, non_negative_int, parse_args, report
from server.app import app as server_app
from server.checkpoint import complete_checkpoints, load_global_srm
from server.inprocess import run_in_process
from server.launch import candidate_service, llm_checkpoint, run_folder
from server.report import FINAL_FILE, FINAL_SUMS_FILE, FLOOR_VIEWS, read_final, refigure, resolved_protocol

log = logging.getLogger(__name__)

# what --report-only may --set: the settings its figures are computed with from the run's saved sums
REPORT_SETTINGS = ("federation.alpha_margin_se",)


def run_dataset(
    dataset: str,
    overrides: list[str],
    checkpoint: str | None,
    out: Path,
    select_users: int,
    central_by_dataset: dict[str, list[dict]],
) -> dict:
    """One federation on ``dataset``; returns its final figures with the run folder, wall time and central SRM."""
    # every user's fresh list: the checks compare request policies (a recipe's gated fleet could not)
    cfg = load_config(
        bench_settings(dataset), [f"data.dataset={dataset}", "federation.fresh_lists=all", *overrides]
    )
    split = TemporalSplit(load_or_prepare(cfg.data, cfg.seed), cfg.data.lag)
    central = central_row(central_by_dataset.get(dataset, []), cfg, split.num_users)  # warns before the run
    split.check_trainable("SRM")  # as the launcher does before it trains anything
    nodes = fleet_size(cfg.federation.num_nodes, split.num_users)
    # --set federation.resume=true --set federation.run_dir=DIR continues that run (more rounds, same folder)
    run_dir = run_folder(cfg.override([f"out_dir={out}"]))
    ckpt = Path(checkpoint) if checkpoint else llm_checkpoint(cfg)
    started = time.perf_counter()
    with candidate_service(cfg, ckpt, "transformers", run_dir) as service:
        cfg = cfg.override([f"federation.service_url={service.url}", f"federation.run_dir={run_dir}"])
        run_in_process(server_app, client_app, nodes, cfg.to_flat())
    final = read_final(run_dir)
    return {
        **final,
        "global SRM, central protocol": global_srm_figures(cfg, split, run_dir, select_users, central),
        "central SRM ndcg@10": None if central is None else central["ndcg@10"],
        "run_dir": str(run_dir),
        "wall_seconds": time.perf_counter() - started,
        "config": cfg,
    }


def finished_report(run_dir: Path, overrides: list[str]) -> tuple[RunConfig, dict]:
    """A finished run's settings and report, the report computed again from its saved sums under ``overrides``.

    A run from before 2026-12-07 saved no sums: its ``final.json`` is read as it is, and its settings say the
    rule it chose α by (validation's best: its ``config.json`` predates the margin, see ``config.PREDATED``).
    """
    if not (run_dir / FINAL_FILE).is_file() or not (run_dir / "config.json").is_file():
        raise ConfigError(
            "--report-only",
            f"must be a finished federation's run folder (with config.json and {FINAL_FILE}), got {run_dir}.",
        )
    cfg = RunConfig.load(run_dir / "config.json").override(overrides)
    final = read_final(run_dir)
    if (run_dir / FINAL_SUMS_FILE).is_file():
        figures, protocol = refigure(run_dir, cfg.federation)
        return cfg, {**final, "protocol": protocol, **figures}
    if overrides:
        raise ConfigError(
            "--set", f"needs the run's {FINAL_SUMS_FILE}, which runs before 2026-12-07 did not save."
        )
    return cfg, final


def global_srm_figures(
    cfg: RunConfig, split: TemporalSplit, run_dir: Path, select_users: int, central: dict | None = None
) -> dict[str, float]:
    """The global SRM under the central baseline's protocol (full catalogue, test NDCG@10 of every user).

    Two models: the final round's, and the round with the best full-catalogue validation NDCG@10 on a seeded
    sample of ``select_users`` users (0 = all), found over the per-round checkpoints. The central SRM keeps its
    best validation epoch, so the second is the like-for-like comparison; neither choice looks at test. With
    ``central`` (the matching row of ``--central``), check 3's paired margin joins them.
    """
    sample = evaluation_users(split.num_users, select_users, cfg.seed)
    rounds = sorted(complete_checkpoints(run_dir))
    valid = {}
    for r in tqdm(rounds, desc="validate each round's global SRM", unit="round"):
        model = load_global_srm(cfg, split.dataset.num_items, run_dir, r)
        valid[r] = evaluate_full(model, split, "valid", cfg.srm.max_len, sample, cutoffs=(10,))["ndcg@10"]
    best = max(valid, key=lambda r: valid[r])

    test = {  # one evaluation when the final round is the best one
        r: ndcg_per_user_on_test(load_global_srm(cfg, split.dataset.num_items, run_dir, r), split)
        for r in {rounds[-1], best}
    }
    figures = {
        "final round": rounds[-1],
        "final valid ndcg@10": valid[rounds[-1]],
        "final test ndcg@10": float(test[rounds[-1]].mean()),
        "best-validation round": best,
        "best-validation valid ndcg@10": valid[best],
        "best-validation test ndcg@10": float(test[best].mean()),
        "validation users": len(sample),
    }
    return figures if central is None else figures | check_three_margin(cfg, split, test[best], central)


def ndcg_per_user_on_test(model: SequentialRecommender, split: TemporalSplit) -> np.ndarray:
    """Each user's test NDCG@10 over the full catalogue from the device view: what ``evaluate_full`` averages."""
    ranks = full_catalogue_ranks(
        model, split.views("test", "device"), split.targets("test"), model.config.max_len
    )
    return ndcg_per_user(ranks, 10)


def dataset_checkpoints(pairs: list[str]) -> dict[str, str]:
    """``--checkpoint DATASET=CKPT`` pairs as a mapping, each checked before any run starts."""
    checkpoints = {}
    for pair in pairs:
        dataset, sep, path = pair.partition("=")
        if not sep or not dataset or not path or not Path(path).is_dir():
            raise ConfigError(
                "--checkpoint", f"must be DATASET=CKPT with CKPT an LLM checkpoint folder, got {pair!r}."
            )
        checkpoints[dataset] = path
    return checkpoints


def central_rows(paths: list[str]) -> dict[str, list[dict]]:
    """Every central SASRec-CE row of each dataset, in file order, from ``benchmarks/srm_central.py`` JSONs."""
    central: dict[str, list[dict]] = {}
    for path in paths:
        try:
            rows = json.loads(Path(path).read_text())["rows"]
            for row in rows:
                if row["model"] == "sasrec-ce":
                    central.setdefault(row["dataset"], []).append(row)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                "--central",
                f"must be a JSON file written by benchmarks/srm_central.py --json; {path}: {exc}.",
            ) from None
    return central


def central_row(rows: list[dict], cfg: RunConfig, num_users: int) -> dict | None:
    """The row of the last central SRM evaluated as ``cfg`` evaluates: same users, numbering, targets.

    The federated SRM is evaluated on all ``num_users`` users, so a central row evaluated on a sample of them
    (``train.eval_users``) does not match. ``None`` (no ratio, and a warning) when no row matches. A row
    written before 2026-12-06 does not say its settings: it is taken as it is, with a warning. Matched before a
    federation runs, so the warning comes first.
    """
    ours = {**cfg.evaluation(), "users": num_users}
    matching = [row for row in rows if all(row.get(key, value) == value for key, value in ours.items())]
    if not matching:
        if rows:
            seen = [{key: row.get(key) for key in ours} for row in rows]
            log.warning(
                "--central: no central SRM of %s was evaluated with this federation's %s (given: %s); its "
                "ratio is left out. Pass the JSON of benchmarks/srm_central.py run with the same settings.",
                cfg.data.dataset,
                ours,
                seen,
            )
        return None
    if unsaid := [key for key in ours if key not in matching[-1]]:
        log.warning(
            "--central: the central SRM of %s does not say its %s; check it by hand",
            cfg.data.dataset,
            ", ".join(unsaid),
        )
    return matching[-1]


# check 3: the federated SRM reaches this share of the central SRM's test NDCG@10
CENTRAL_SHARE = 0.9


def check_three_margin(
    cfg: RunConfig, split: TemporalSplit, federated: np.ndarray, central: dict
) -> dict[str, float]:
    """Check 3 as a paired difference: the chosen round's test NDCG@10 minus 90 % of the central SRM's.

    ``federated`` holds the chosen round's per-user test NDCG@10. Both SRMs rank every user's test target over
    the catalogue, so the per-user differences are paired, and their spread is the margin's standard error; its
    sign is the check's verdict. Empty, with a warning, when the central SRM's run folder (``run`` in its row;
    older rows may lack it) cannot be read, or when its model does not give the row's figure (evaluated on a
    sample, or the folder since replaced): a margin whose sign could contradict the ratio is no margin.
    """
    try:
        central_srm = load_central_srm(central["run"], cfg.data.dataset, split.dataset.num_items)
    except KeyError:
        log.warning("--central: its row names no run folder; check 3's paired standard error is left out")
        return {}
    except (OSError, TypeError, ValueError) as exc:
        log.warning("--central: check 3's paired standard error is left out: %s", exc)
        return {}
    central_per_user = ndcg_per_user_on_test(central_srm, split)
    if not np.isclose(central_per_user.mean(), central["ndcg@10"]):
        log.warning(
            "--central: the SRM in %s gives test NDCG@10 %.4f over every user, its row %.4f; check 3's paired "
            "standard error is left out",
            central["run"],
            central_per_user.mean(),
            central["ndcg@10"],
        )
        return {}
    diff = federated - CENTRAL_SHARE * central_per_user
    return {
        "check 3 margin": float(diff.mean()),
        "check 3 paired se": float(diff.std(ddof=1) / np.sqrt(len(diff))),
    }


# check 4: twice the official LSC4Rec code's shipped fused NDCG@10 on Beauty at 5 % requests (0.0132, under its
# own protocol: random requests, sequential numbering; README, "Where this departs from the official code")
BEAUTY_AT_5 = 0.0264
FLOORS = {"transition": "item-transition", "popularity": "most-popular"}  # this table's name: the report's


def floors_beside(final: dict, device_only: bool = False) -> dict[str, float]:
    """Both floors (``final["floors"]``, over the full catalogue) queried with the cloud's and the device's view.

    ``device_only`` leaves the cloud's out: the federated SRM ranks the catalogue from the device view alone.
    """
    queries = ("fresh",) if device_only else FLOOR_VIEWS
    return {
        f"{name} floor, {FLOOR_VIEWS[query]}": final["floors"][floor][query]["ndcg@10"]
        for name, floor in FLOORS.items()
        for query in queries
    }


# the printed tables' columns: every figure of every row (the JSON holds the same rows, with their dataset)
COLUMNS = [
    "row",
    "alpha",
    "ndcg@10",
    "hr@10",
    "valid ndcg@10",
    "random at same rate",
    "random sd",
    "margin",
    "paired se",
    "transition floor, cloud view",
    "transition floor, device view",
    "popularity floor, cloud view",
    "popularity floor, device view",
    "central SRM",
    "ratio",
    "pass",
]


def check_three(fed: dict, ratio: float) -> dict:
    """Check 3's verdict, with its paired margin where it was computed (runs without a central folder lack it)."""
    paired = (
        {"margin": fed["check 3 margin"], "paired se": fed["check 3 paired se"]}
        if "check 3 margin" in fed
        else {}
    )
    return {**paired, "pass": ratio >= CENTRAL_SHARE}


def part_of(row: dict) -> str:
    """The printed table a row belongs in: its dataset's rankings and policies, its federated SRM, its checks."""
    name = row["row"]
    kind = (
        "the issue's checks"
        if name.startswith("check:")
        else "federated SRM against the central one"
        if name.startswith("federated SRM")
        else "rankings and request policies"
    )
    return f"{row['dataset']}, {kind}"


def rows_for(dataset: str, final: dict, central: float | None) -> list[dict]:
    """Table rows: the rankings at the chosen α, then each request policy, with the checks of the issue."""
    rankings = {(r["ranking"], r["list"]): r for r in final["rankings"]}
    fused, llm, srm = (rankings[(name, "stale")]["ndcg@10"] for name in ("fused", "LLM-only", "SRM-only"))
    fed = final["global SRM, central protocol"]
    alpha = final["alpha"]
    rows = [
        {
            "dataset": dataset,
            "row": f"{r['ranking']} ({r['list']} list)",
            "alpha": r["alpha"],
            "ndcg@10": r["ndcg@10"],
            "hr@10": r["hr@10"],
            **floors_beside(final),
        }
        for r in final["rankings"]
    ]
    signal = final.get("request signal", final["protocol"]["measure"])  # older reports lack the first
    for p in final["policies"]:
        rows.append(
            {
                "dataset": dataset,
                "row": f"budget {p['budget']:.0%}: gated by {signal} (rate {p['gated rate']:.3f})",
                "alpha": alpha,
                "ndcg@10": p["gated ndcg@10"],
                "random at same rate": p["random ndcg@10 at gated rate"],
                "random sd": p.get("random sd at gated rate"),  # reports before 2026-12-02 lack it
                **floors_beside(final),
            }
        )
    for label, key in (
        (f"final round {fed['final round']}", "final"),
        (f"round {fed['best-validation round']}, best validation", "best-validation"),
    ):
        ratio = fed[f"{key} test ndcg@10"] / central if central else None
        rows.append(
            {
                "dataset": dataset,
                "row": f"federated SRM, full catalogue ({label})",
                "ndcg@10": fed[f"{key} test ndcg@10"],
                "valid ndcg@10": fed[f"{key} valid ndcg@10"],
                "central SRM": central,
                "ratio": ratio,
                **floors_beside(final, device_only=True),
                # check 3 reads the round validation chose, never the test's best
                **(check_three(fed, ratio) if key == "best-validation" and ratio is not None else {}),
            }
        )
    same = {0.0: " (α = 0: fused is SRM-only, a tie)", 1.0: " (α = 1: fused is LLM-only)"}.get(alpha, "")
    # the margin over the stronger of the two, with its paired standard error (reports before 2026-12-06 lack it)
    paired = final.get("fused margins", {}).get("over SRM-only" if srm >= llm else "over LLM-only", {})
    rows.append(
        {
            "dataset": dataset,
            "row": f"check: fused >= max(LLM, SRM){same}",
            "alpha": alpha,
            "ndcg@10": fused,
            "margin": fused - max(llm, srm),
            "paired se": paired.get("paired se"),
            "pass": fused >= max(llm, srm),
        }
    )
    stale_floor = final["floors"]["item-transition"]["stale"]["ndcg@10"]
    for p in final["policies"]:
        if p["budget"] in (0.05, 0.1, 0.2):
            rows.append(
                {
                    "dataset": dataset,
                    "row": f"check: gated > random at {p['gated rate']:.3f}",
                    "alpha": alpha,
                    "ndcg@10": p["gated ndcg@10"],
                    "random at same rate": p["random ndcg@10 at gated rate"],
                    "random sd": p.get("random sd at gated rate"),
                    "pass": p["gated ndcg@10"] > p["random ndcg@10 at gated rate"],
                }
            )
        if p["budget"] == 0.05 and dataset == "beauty":  # the check 4, in its own words
            rows.append(
                {
                    "dataset": dataset,
                    "row": f"check: fused at 5 % >= {BEAUTY_AT_5} and > the stale transition floor",
                    "alpha": alpha,
                    "ndcg@10": p["gated ndcg@10"],
                    **floors_beside(final),
                    "pass": p["gated ndcg@10"] >= BEAUTY_AT_5 and p["gated ndcg@10"] > stale_floor,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", nargs="+", type=dataset_name, help="datasets to run (default: ml-latest-small beauty)"
    )
    parser.add_argument(
        "--report-only",
        help="RUN_DIR of a finished federation: recompute its table only (with --central, --select-users, --json, "
        "and --set federation.alpha_margin_se=M to choose α by another rule)",
    )
    parser.add_argument(
        "--checkpoint", action="append", default=[], help="DATASET=CKPT: an LLM checkpoint to use"
    )
    parser.add_argument(
        "--central",
        action="append",
        default=[],
        help="JSON of benchmarks/srm_central.py: its SASRec-CE rows are the central SRM",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="key=value for every run"
    )
    parser.add_argument("--out", help="folder for the run folders (default: runs/bench)")
    parser.add_argument(
        "--select-users",
        type=non_negative_int,
        default=5000,
        help="users (seeded sample; 0 = all) whose validation picks the best round's global SRM",
    )
    parser.add_argument("--json", help="write the table as JSON to this file")
    args = parse_args(
        parser,
        {
            "data.dataset": "name the datasets with --datasets",
            "federation.service_url": "it starts its own candidate service (--checkpoint picks the LLM)",
            "out_dir": "use --out",
            "federation.fresh_lists": "its checks compare request policies on every user's fresh list",
        },
    )
    if args.report_only and (args.datasets or args.checkpoint or args.out):
        parser.error("--report-only reads a finished run: drop --datasets, --checkpoint and --out")
    if args.report_only and (changed := sorted({set_key(p) for p in args.overrides} - set(REPORT_SETTINGS))):
        parser.error(
            f"--set {changed[0]}: --report-only can change only what the report is computed with "
            f"({', '.join(REPORT_SETTINGS)}), not the run"
        )
    args.datasets = [] if args.report_only else args.datasets or ["ml-latest-small", "beauty"]
    args.out = args.out or "runs/bench"
    checkpoints = dataset_checkpoints(args.checkpoint)
    if unknown := sorted(set(checkpoints) - set(args.datasets)):
        parser.error(
            f"--checkpoint {unknown[0]}=…: {unknown[0]} is not among --datasets {' '.join(args.datasets)}"
        )
    central = central_rows(args.central)
    rows, runs = [], {}
    if args.report_only:  # a finished run: read its report and evaluate its final checkpoint
        run_dir = Path(args.report_only)
        cfg, final = finished_report(run_dir, args.overrides)
        split = TemporalSplit(load_or_prepare(cfg.data, cfg.seed), cfg.data.lag)
        row = central_row(central.get(cfg.data.dataset, []), cfg, split.num_users)
        final["global SRM, central protocol"] = global_srm_figures(
            cfg, split, run_dir, args.select_users, row
        )
        runs[cfg.data.dataset] = {
            "run_dir": str(run_dir),
            "protocol": resolved_protocol(final["protocol"], final),
            "config": cfg.to_flat(),
        }
        rows += rows_for(cfg.data.dataset, final, None if row is None else row["ndcg@10"])
    for dataset in args.datasets:
        final = run_dataset(
            dataset,
            args.overrides,
            checkpoints.get(dataset),
            Path(args.out),
            args.select_users,
            central,
        )
        cfg: RunConfig = final.pop("config")
        runs[dataset] = {
            "run_dir": final["run_dir"],
            "wall_seconds": final["wall_seconds"],
            "protocol": resolved_protocol(final["protocol"], final),
            "config": cfg.to_flat(),
        }
        rows += rows_for(dataset, final, final["central SRM ndcg@10"])
    ranking = (
        "LLM-only, SRM-only, fused and the policies rank the candidate list; the federated SRM and the floors "
        "the full catalogue. The floors are queried with the cloud's view (ℓ items behind: the stale list's "
        "query) and with the device's view, which the SRM reads in every row. Each run's protocol in runs"
    )
    report(
        "Federation quality (test; α and the request signal chosen on validation, τ on the label-free "
        "test-time histogram)",
        rows,
        COLUMNS,
        args.json,
        extra={
            "ranking": ranking,
            "margin": "check 1: fused minus the stronger of LLM-only and SRM-only (stale list); check 3: the "
            "federated SRM minus 90 % of the central one (per user, full catalogue); each with its paired se",
            **{
                f"protocol of {name}": ", ".join(
                    f"{key} {value}"
                    for key, value in {"seed": run["config"]["seed"], **run["protocol"]}.items()
                )
                for name, run in runs.items()
            },
            "runs": runs,
        },
        group=part_of,
    )


if __name__ == "__main__":
    run_main(main)
