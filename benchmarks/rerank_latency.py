"""Latency of reranking one candidate list on the device: one user, history 50, K = 50, one CPU thread.

The SRM scores the K candidates of the cloud's list given the fresh history (the device's per-request work).
Beside it, scoring the whole catalogue for the same user: what the drift signal and the full-catalogue
evaluation pay per user, and what makes a DIN federation slower than a SASRec one (DIN's attention depends on
the candidate). Weights are random: latency does not depend on them. Example:

    python benchmarks/rerank_latency.py --json runs/bench/rerank_latency.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from clients.srm import SRMConfig, build_srm
from lsc4rec.errors import run_main
from lsc4rec.tables import parse_args, positive_int, report


def measure(call: Callable[[], object], repeats: int, warmup: int) -> np.ndarray:
    """Milliseconds of ``repeats`` calls of ``call`` after ``warmup`` untimed ones."""
    timings = []
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            timings.append((time.perf_counter() - start) * 1e3)
    return np.array(timings)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    models = ["sasrec", "gru4rec", "din"]
    parser.add_argument("--models", nargs="+", default=models, choices=models)
    parser.add_argument(
        "--items", type=positive_int, default=12101, help="catalogue size N (Beauty's by default)"
    )
    parser.add_argument("--history", type=positive_int, default=50)
    parser.add_argument("--k", type=positive_int, default=50)
    parser.add_argument("--hidden", type=positive_int, default=64)
    parser.add_argument("--repeats", type=positive_int, default=2000)
    parser.add_argument(
        "--catalogue-repeats", type=positive_int, default=20, help="timed full-catalogue scorings per model"
    )
    parser.add_argument("--json", help="write the table as JSON to this file")
    args = parse_args(parser)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    history = torch.randint(1, args.items + 1, (1, args.history))
    candidates = torch.randint(1, args.items + 1, (1, args.k))
    rows = []
    for name in args.models:
        model = build_srm(SRMConfig(model=name, hidden=args.hidden, max_len=args.history), args.items).eval()
        ms = measure(lambda m=model: m.score(history, candidates), args.repeats, warmup=50)
        catalogue = measure(lambda m=model: m.score_all(history), args.catalogue_repeats, warmup=2)
        rows.append(
            {
                "model": name,
                "p50 ms": float(np.percentile(ms, 50)),
                "p95 ms": float(np.percentile(ms, 95)),
                "mean ms": float(ms.mean()),
                "calls": args.repeats,
                "catalogue p50 ms": float(np.percentile(catalogue, 50)),
            }
        )
    setting = {"history": args.history, "k": args.k, "hidden": args.hidden, "threads": 1, "items": args.items}
    report(
        f"Rerank latency, one user (T={args.history}, K={args.k}, D={args.hidden}, 1 thread)",
        rows,
        ["model", "p50 ms", "p95 ms", "mean ms", "calls", "catalogue p50 ms"],
        args.json,
        {"setting": setting},
    )


if __name__ == "__main__":
    run_main(main)
