"""The candidate service under a burst: /healthz and /metrics while requests wait, and the service's memory.

``--clients`` clients each post one request of ``--batch`` histories at the same moment (transformers engine, one
checkpoint, K = ``--k``). Once the first is being ranked and the others wait, ``/healthz`` and ``/metrics`` are
timed; then the burst's wall time and the service's peak resident memory (Linux's VmHWM, reset just before the
burst) are reported. A device's first attempt includes ``/healthz``, so a health check that queues behind a
burst looks to it like an outage, and a load balancer's probe would take the service out of rotation.

    PYTHONPATH=. .venv/bin/python benchmarks/service_load.py --checkpoint CKPT --json FILE
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from llm_cloud.checkpoint import read_template
from llm_cloud.processes import free_port, start_service
from lsc4rec.errors import ConfigError, run_main
from lsc4rec.protocol import MAX_BATCH, MAX_HISTORY, MAX_K
from lsc4rec.runs import output_path
from lsc4rec.tables import parse_args, positive_int, report

PROBES = ("/healthz", "/metrics")


def memory_kib(pid: int, field: str) -> int | None:
    """``field`` (VmHWM, VmRSS) of process ``pid`` in KiB, or None where /proc does not say (not Linux)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in lines if line.startswith(f"{field}:")), None)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current resident size (Linux: ``5`` into clear_refs); False where that is refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def burst(url: str, bodies: list[dict]) -> dict:
    """Post every body at once; time the probes while they wait; return the timings and the answers' statuses."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        started = time.perf_counter()
        pending = [pool.submit(httpx.post, f"{url}/v1/candidates", json=b, timeout=600) for b in bodies]
        time.sleep(1.0)  # every client has connected and sent its body; the first one is being ranked
        probes = {path: timed_get(url, path) for path in PROBES}
        statuses = [p.result().status_code for p in pending]
    return {
        "probe_ms": probes,
        "burst_s": time.perf_counter() - started,
        "ok": statuses.count(200),
        "answers": len(statuses),
    }


def timed_get(url: str, path: str) -> float:
    """Milliseconds of one GET of ``path``, which must succeed."""
    t0 = time.perf_counter()
    httpx.get(f"{url}{path}", timeout=600).raise_for_status()
    return 1e3 * (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--clients", type=positive_int, default=60, help="requests posted at once")
    parser.add_argument("--batch", type=positive_int, default=128, help="histories per request")
    parser.add_argument("--k", type=positive_int, default=20)
    parser.add_argument("--history", type=positive_int, default=50)
    parser.add_argument("--log-dir", type=Path, default=Path("runs/bench-service-load"))
    parser.add_argument("--json", type=Path)
    args = parse_args(parser)
    if args.clients > 500:
        raise ConfigError("--clients", f"must be at most 500 (one thread each), got {args.clients}.")
    if args.batch > MAX_BATCH:
        raise ConfigError("--batch", f"must be at most the service's limit {MAX_BATCH}, got {args.batch}.")
    if args.k > MAX_K:
        raise ConfigError("--k", f"must be at most the service's limit {MAX_K}, got {args.k}.")
    template = read_template(args.checkpoint)
    if args.history > min(template.num_items, MAX_HISTORY):
        raise ConfigError(
            "--history", f"must be at most {min(template.num_items, MAX_HISTORY)}, got {args.history}."
        )
    output_path(args.log_dir, "--log-dir", folder=True)
    rng = np.random.default_rng(0)
    bodies = [
        {
            "histories": [
                (rng.choice(template.num_items, args.history, replace=False) + 1).tolist()
                for _ in range(args.batch)
            ],
            "k": args.k,
        }
        for _ in range(args.clients)
    ]
    args_service = ["--checkpoint", str(args.checkpoint), "--engine", "transformers"]
    with start_service(args_service, free_port(), args.log_dir / "service.log") as server:
        pid = server.process.pid
        idle_ms = timed_get(server.url, "/healthz")
        before = memory_kib(pid, "VmRSS")
        peak_reset = reset_peak(pid)
        result = burst(server.url, bodies)
        peak, after = memory_kib(pid, "VmHWM"), memory_kib(pid, "VmRSS")
    row = {
        "checkpoint": str(args.checkpoint),
        "clients": args.clients,
        "batch": args.batch,
        "k": args.k,
        "history": args.history,
        "healthz_idle_ms": idle_ms,
        **result,
        "rss_before_mib": None if before is None else before / 1024,
        "peak_rss_mib": peak / 1024 if peak is not None and peak_reset else None,
        "rss_after_mib": None if after is None else after / 1024,
    }
    # the probes timed while the burst's requests wait, as columns of their own
    waiting = {f"{path.strip('/')}_waiting_ms": ms for path, ms in row["probe_ms"].items()}
    row.update(waiting)
    columns = [
        "clients",
        "batch",
        "k",
        "history",
        "healthz_idle_ms",
        *waiting,
        "ok",
        "answers",
        "burst_s",
        "rss_before_mib",
        "peak_rss_mib",
        "rss_after_mib",
    ]
    title = "The candidate service under a burst (transformers engine; memory: the service's RSS, peak VmHWM)"
    report(title, [row], columns, args.json and str(args.json), extra={"checkpoint": str(args.checkpoint)})


if __name__ == "__main__":
    run_main(main)
