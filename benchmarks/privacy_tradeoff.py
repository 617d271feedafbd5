"""What user-level differential privacy of the global SRM costs: the same federation at several noise multipliers.

Each run is the default federation (one user per device, so a node's data is one user's), with
``federation.dp_noise`` set to each ``--noise`` value and ``federation.dp_clip`` to ``--clip``: every sampled
device's update is clipped, their equal-weight mean gets Gaussian noise, and Flower's RDP accountant reports the
ε spent over the rounds (no credit for sampling; zero-out neighbours, strategies/privacy.py). Noise 0 is the
same fleet without privacy, weighting by examples as usual. The real ServerApp and ClientApp run over the
in-process grid against the real candidate service on 127.0.0.1 (as ``benchmarks/federation_quality.py``).

Protocol of every figure: lag 2, K = 50, SASRec-CE, random numbering; test NDCG@10 ranking over the LLM's list
(fused at the α chosen on validation), and the global SRM over the full catalogue. The noise draws come from the
operating system (strategies/privacy.py), so a private run does not repeat to the digit. Example:

    python benchmarks/privacy_tradeoff.py --noise 0,0.3,1 --clip 1 --json runs/bench/privacy.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from clients.app import app as client_app
from lsc4rec.config import FederationConfig, load_config
from lsc4rec.data.partition import fleet_size
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.data.split import TemporalSplit
from lsc4rec.errors import run_main
from lsc4rec.runs import make_run_dir
from lsc4rec.tables import non_negative_floats, parse_args, report
from server.app import DP_EPSILON_FIGURE
from server.app import app as server_app
from server.inprocess import run_in_process
from server.launch import candidate_service, llm_checkpoint, run_folder
from server.report import read_final


def row(noise: float, final: dict, seconds: float, delta: float) -> dict:
    """The table row of one finished run."""
    rankings = {r["ranking"]: r["ndcg@10"] for r in final["rankings"] if r["list"] == "stale"}
    gated = next(p for p in final["policies"] if p["budget"] == 0.05)
    return {
        "noise": noise,
        "epsilon": final.get(DP_EPSILON_FIGURE.format(delta=delta)),  # absent without privacy
        "noised rounds": final.get("DP noised rounds"),
        "LLM-only": rankings["LLM-only"],
        "SRM-only": rankings["SRM-only"],
        "fused": rankings["fused"],
        "alpha": final["alpha"],
        "fused, 5 % gated": gated["gated ndcg@10"],
        "global SRM, catalogue": final["federated SRM full-catalogue ndcg@10 (global)"],
        "personal SRM, catalogue": final["federated SRM full-catalogue ndcg@10 (personal)"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument(
        "--noise", type=non_negative_floats, default=[0.0, 0.3, 1.0], help="noise multipliers z"
    )
    parser.add_argument(
        "--clip",
        type=float,
        default=FederationConfig.dp_clip,
        help="federation.dp_clip: L2 bound of one update",
    )
    parser.add_argument(
        "--delta",
        type=float,
        default=FederationConfig.dp_delta,
        help="federation.dp_delta: δ of the reported ε",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="key=value for every run"
    )
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--json", help="write the table as JSON to this file")
    args = parse_args(
        parser,
        {
            "data.dataset": "use --dataset",
            "federation.dp_noise": "use --noise",
            "federation.dp_clip": "use --clip",
            "federation.dp_delta": "use --delta",
            "federation.service_url": "it starts its own candidate service",
            "federation.run_dir": "use --out",
            "federation.fresh_lists": "its figures compare request policies on every user's fresh list",
        },
    )
    base = load_config(None, [f"data.dataset={args.dataset}", "federation.fresh_lists=all", *args.overrides])
    # noise 0 is plain FedAvg, which takes no clip or δ
    private = [f"federation.dp_clip={args.clip}", f"federation.dp_delta={args.delta}"]
    configs = {
        noise: base.override([f"federation.dp_noise={noise}", *(private if noise > 0 else [])])
        for noise in args.noise
    }  # checked first
    split = TemporalSplit(load_or_prepare(base.data, base.seed), base.data.lag)
    split.check_trainable("SRM")
    nodes = fleet_size(base.federation.num_nodes, split.num_users)
    # one folder for the sweep: the service's log, and a folder a run
    sweep = make_run_dir(args.out, f"privacy-{Path(args.dataset).name}")
    rows, runs = [], {}
    with candidate_service(base, llm_checkpoint(base), "transformers", sweep) as service:
        for noise, cfg in configs.items():
            run_dir = sweep / f"noise-{noise:g}"
            cfg = cfg.override([f"federation.service_url={service.url}", f"federation.run_dir={run_dir}"])
            run_folder(cfg)
            started = time.perf_counter()
            run_in_process(server_app, client_app, nodes, cfg.to_flat())
            final = read_final(run_dir)
            rows.append(row(noise, final, time.perf_counter() - started, args.delta))
            runs[f"{noise:g}"] = str(run_dir)
    fed = base.federation
    protocol = {
        "dataset": args.dataset,
        "nodes": nodes,
        "rounds": fed.rounds,
        "fraction_train": fed.fraction_train,
        "clip": args.clip,
        "delta": args.delta,
        "accounting": "RDP, one Gaussian release per round, no amplification by sampling",
        "lag": base.data.lag,
        "K": base.llm.k,
        "ranking": "NDCG@10 over the LLM's list; SRM rows 'catalogue' over the full catalogue",
    }
    report(
        f"Differential privacy of the global SRM on {args.dataset} (clip {args.clip:g}, δ {args.delta:g})",
        rows,
        list(rows[0]),
        args.json,
        {"protocol": protocol, "runs": runs},
    )


if __name__ == "__main__":
    run_main(main)
