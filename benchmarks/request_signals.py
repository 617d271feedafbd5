"""Which request signal tells a device that a fresh list will help? Gated requests by each signal against random.

For a finished federation (its final global SRM, no adaptation; or, with ``--srm``, a centrally trained SRM
on the same data: what a central-quality model would give) and an LLM checkpoint served by the real
candidate service, a seeded sample of users is evaluated as one node: stale and fresh lists, fusion at every
α. For each signal (``federation.measure``: drift, displacement, kendall, topk, confidence) τ is calibrated
at budgets of 5, 10 and 20 % on that stage's histogram of the signal (it needs no label: the fleet does this
live); α is chosen on validation. Choose the signal by its VALIDATION gain over random requests; the test
columns are reported, not tuned on. Example:

    python benchmarks/request_signals.py --run RUN_DIR --checkpoint LLM_CKPT --json runs/bench/signals.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from clients.central import evaluation_users, load_central_srm
from clients.cloud import CloudClient
from clients.inference import collaborative_inference
from clients.node import NodeData, load_node
from llm_cloud.checkpoint import check_same_items
from llm_cloud.processes import free_port, start_service
from lsc4rec.config import MEASURES, RunConfig
from lsc4rec.data.split import Stage
from lsc4rec.errors import ConfigError, run_main
from lsc4rec.outcomes import signal_comparison
from lsc4rec.tables import non_negative_int, parse_args, report
from server.checkpoint import load_global_srm
from server.report import alpha_rule


class StageLists(NamedTuple):
    """One stage's device views, cloud views and targets, and the stale and fresh lists as tensors [B, K]."""

    device: list[np.ndarray]
    cloud: list[np.ndarray]
    targets: np.ndarray
    lists: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # stale items, scores; fresh ...


def stage_lists(client: CloudClient, node: NodeData, stage: Stage) -> StageLists:
    """The lists the candidate service gives for the stale (cloud view) and fresh (device view) queries."""
    device, cloud, targets = node.views(stage)
    stale, fresh = client.candidates(cloud), client.candidates(device)
    return StageLists(device, cloud, targets, tuple(torch.from_numpy(a) for a in (*stale, *fresh)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="a finished federation's run folder")
    parser.add_argument("--checkpoint", required=True, help="the LLM checkpoint the federation used")
    parser.add_argument(
        "--srm", help="a central SRM run folder (lsc4rec srm train) to use instead of the run's global SRM"
    )
    parser.add_argument(
        "--users", type=non_negative_int, default=6000, help="seeded sample of users (0 = all)"
    )
    parser.add_argument("--json", help="write the table as JSON to this file")
    args = parse_args(parser)

    torch.set_num_threads(1)
    run_dir = Path(args.run)
    if not (run_dir / "config.json").is_file():
        raise ConfigError("--run", f"must be a federation's run folder (with config.json), got {run_dir}.")
    cfg = RunConfig.load(run_dir / "config.json")
    split = load_node(cfg.data, cfg.seed, 0, 1).split
    check_same_items(args.checkpoint, split.dataset)  # the LLM must number items as the run's data does
    users = evaluation_users(split.num_users, args.users, cfg.seed)
    node = NodeData(split, users)
    try:
        model = (
            load_central_srm(args.srm, cfg.data.dataset, node.num_items)
            if args.srm
            else load_global_srm(cfg, node.num_items, run_dir)
        )
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError("--srm" if args.srm else "--run", f"must hold a trained SRM ({exc}).") from None
    alphas = np.array(cfg.federation.alphas)
    with start_service(
        ["--checkpoint", args.checkpoint], free_port(), run_dir / "signals-service.log"
    ) as svc:
        client = CloudClient(svc.url, cfg.llm.k, timeout_s=120.0)
        try:
            lists = {stage: stage_lists(client, node, stage) for stage in ("valid", "test")}
        finally:
            client.close()
    outcomes = {
        stage: collaborative_inference(
            model,
            got.device,
            got.cloud,
            *got.lists,
            got.targets,
            alphas,
            cfg.federation.bins,
            MEASURES,
            cfg.srm.max_len,
            norm=cfg.federation.norm,
        )
        for stage, got in lists.items()
    }
    rows = signal_comparison(outcomes["valid"], outcomes["test"], cfg.federation.alpha_margin_se)
    columns = ["signal", "budget", "alpha"] + [
        f"{s} {c}" for s in ("valid", "test") for c in ("rate", "gated", "random", "gain", "random sd")
    ]
    protocol = {
        "dataset": cfg.data.dataset,
        "lag": cfg.data.lag,
        "K": cfg.llm.k,
        "users": len(users),
        "srm": f"central SRM of {args.srm}"
        if args.srm
        else f"{cfg.srm.model}, final global checkpoint of {run_dir}, no adaptation",
        "ranking": "over the list; NDCG@10; tau from each stage's label-free signal histogram",
        "α choice": alpha_rule(cfg.federation),
    }
    report(
        f"Request signals on {cfg.data.dataset}: gated vs random requests (NDCG@10)",
        rows,
        columns,
        args.json,
        {"protocol": protocol},
    )


if __name__ == "__main__":
    run_main(main)
