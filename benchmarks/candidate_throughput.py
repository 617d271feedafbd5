"""Candidate throughput: the service on the transformers engine, the service on the vLLM engine, and vLLM direct.

One checkpoint, K = 50, histories of 50 random items, batch sizes 1, 32 and 256. For each setting: histories per
second and p50/p95 latency of one HTTP call. "vllm direct" posts a prebuilt ``/v1/completions`` body straight to
the vLLM server (what the service sends, built once outside the timed loop); the service's overhead at a batch
size is its p50 latency over vLLM direct's, minus one. "service+vllm https" is the same service over https (a
loopback CA, one kept-alive connection, as a client of a deployment's https cloud holds), so the two service rows
show what TLS adds. It also reports how long vLLM took to become ready; ``--eager`` starts it without
torch.compile, to compare both.

    PYTHONPATH=. .venv/bin/python benchmarks/candidate_throughput.py --checkpoint CKPT --json FILE
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np

from llm_cloud.checkpoint import read_template
from llm_cloud.engines.vllm_engine import VLLMEngine
from llm_cloud.processes import free_port, start_service
from llm_cloud.vllm_server import start_vllm
from lsc4rec.credentials import client_context, make_loopback_tls
from lsc4rec.errors import ConfigError, run_main
from lsc4rec.protocol import MAX_BATCH, MAX_HISTORY, MAX_K
from lsc4rec.runs import output_path
from lsc4rec.tables import parse_args, positive_int, positive_ints, report


def measure(
    calls: dict[str, Callable[[], None]], batch: int, seconds: float, min_calls: int = 5
) -> list[dict]:
    """Time each of ``calls`` (one warm-up each) in turns until ``seconds`` have passed and ``min_calls`` were made.

    Alternating the setups call by call exposes them to the same background load, which on a shared machine
    matters more than any other source of noise.
    """
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    started = time.perf_counter()
    while min(map(len, latencies.values())) < min_calls or time.perf_counter() - started < seconds:
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            latencies[name].append(time.perf_counter() - t0)
    rows = []
    for name, values in latencies.items():
        lat = np.array(values)
        rows.append(
            {
                "setup": name,
                "batch": batch,
                "calls": len(lat),
                "histories_per_s": batch * len(lat) / lat.sum(),
                "p50_ms": 1e3 * float(np.percentile(lat, 50)),
                "p95_ms": 1e3 * float(np.percentile(lat, 95)),
            }
        )
    return rows


def service_call(client: httpx.Client, body: dict) -> Callable[[], None]:
    def call() -> None:
        reply = client.post("/v1/candidates", json=body)
        reply.raise_for_status()

    return call


def vllm_direct_call(
    client: httpx.Client, engine: VLLMEngine, histories: list[list[int]], k: int
) -> Callable:
    body = engine.completion_body(histories, k, [set(h) for h in histories])

    def call() -> None:
        reply = client.post("/v1/completions", json=body)
        reply.raise_for_status()
        reply.json()

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--batches", type=positive_ints, default=[1, 32, 256], help="comma-separated sizes")
    parser.add_argument("--k", type=positive_int, default=50)
    parser.add_argument("--history", type=positive_int, default=50)
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per setting")
    parser.add_argument(
        "--eager", action="store_true", help="start vLLM without torch.compile (--enforce-eager)"
    )
    parser.add_argument("--log-dir", type=Path, default=Path("runs/bench-throughput"))
    parser.add_argument("--json", type=Path)
    args = parse_args(parser)
    if args.k > MAX_K:
        raise ConfigError("--k", f"must be at most the service's limit {MAX_K}, got {args.k}.")
    if max(args.batches) > MAX_BATCH:
        raise ConfigError(
            "--batches", f"must be at most the service's limit {MAX_BATCH}, got {max(args.batches)}."
        )
    if not 0 < args.seconds <= 3600:
        raise ConfigError("--seconds", f"must be in (0, 3600], got {args.seconds}.")
    template = read_template(args.checkpoint)
    limit = min(template.num_items, MAX_HISTORY)
    if args.history > limit:
        raise ConfigError(
            "--history", f"must be at most {limit} (distinct items per history), got {args.history}."
        )
    output_path(args.log_dir, "--log-dir", folder=True)
    rng = np.random.default_rng(0)
    pool = [rng.choice(template.num_items, args.history, replace=False) + 1 for _ in range(max(args.batches))]
    pool = [h.tolist() for h in pool]
    started = time.perf_counter()
    with start_vllm(args.checkpoint, free_port(), args.log_dir / "vllm.log", eager=args.eager) as vllm:
        vllm_ready_s = time.perf_counter() - started
        rows = _measure_all(args, vllm.url, pool)
    direct = {r["batch"]: r["p50_ms"] for r in rows if r["setup"] == "vllm direct"}
    for row in rows:
        row["overhead_vs_vllm_direct"] = row["p50_ms"] / direct[row["batch"]] - 1.0
    report(
        "Candidate throughput (p50 latency over vLLM direct's, minus one: the overhead)",
        rows,
        ["setup", "batch", "calls", "histories_per_s", "p50_ms", "p95_ms", "overhead_vs_vllm_direct"],
        args.json and str(args.json),
        extra={
            "checkpoint": str(args.checkpoint),
            "k": args.k,
            "history": args.history,
            "vllm_eager": args.eager,
            "vllm_ready_s": round(vllm_ready_s, 1),
        },
    )


def _measure_all(args: argparse.Namespace, vllm_url: str, pool: list[list[int]]) -> list[dict]:
    """Start the service on each engine next to the running vLLM, then time the four setups at each batch."""
    rows = []
    tls = make_loopback_tls(args.log_dir / "tls")
    on_vllm_args = ["--checkpoint", str(args.checkpoint), "--engine", "vllm", "--vllm-url", vllm_url]
    with (
        start_service(
            ["--checkpoint", str(args.checkpoint), "--engine", "transformers"],
            free_port(),
            args.log_dir / "service-transformers.log",
        ) as on_transformers,
        start_service(on_vllm_args, free_port(), args.log_dir / "service-vllm.log") as on_vllm,
        start_service(
            on_vllm_args, free_port(), args.log_dir / "service-vllm-https.log", tls=tls
        ) as on_vllm_https,
        httpx.Client(base_url=on_transformers.url, timeout=300) as transformers_client,
        httpx.Client(base_url=on_vllm.url, timeout=300) as service_client,
        httpx.Client(
            base_url=on_vllm_https.url, timeout=300, verify=client_context(str(tls.ca))
        ) as https_client,
        httpx.Client(base_url=vllm_url, timeout=300) as vllm_client,
        closing(VLLMEngine(args.checkpoint, vllm_url)) as engine,
    ):
        for batch in args.batches:
            body = {"histories": pool[:batch], "k": args.k}
            rows += measure(
                {"service+transformers": service_call(transformers_client, body)}, batch, args.seconds
            )
            rows += measure(
                {
                    "service+vllm": service_call(service_client, body),
                    "service+vllm https": service_call(https_client, body),
                    "vllm direct": vllm_direct_call(vllm_client, engine, pool[:batch], args.k),
                },
                batch,
                args.seconds,
            )
    return rows


if __name__ == "__main__":
    run_main(main)
