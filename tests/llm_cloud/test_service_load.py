"""benchmarks/service_load.py: a burst on the real service, probes timed while it waits, the service's memory."""

import json
from pathlib import Path

from tests.conftest import run_benchmark


def test_a_burst_is_answered_and_the_probes_are_timed_while_it_waits(tiny_checkpoint, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    args = [
        "--checkpoint",
        str(tiny_checkpoint),
        "--clients",
        "4",
        "--batch",
        "3",
        "--k",
        "5",
        "--history",
        "4",
    ]
    done = run_benchmark("service_load", *args, "--log-dir", str(tmp_path / "logs"), "--json", str(out))
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["ok"], row["answers"]) == (4, 4)
    assert set(row["probe_ms"]) == {"/healthz", "/metrics"} and all(ms > 0 for ms in row["probe_ms"].values())
    assert "healthz_waiting_ms" in done.stdout  # the printed table holds the JSON's figures
    assert row["healthz_waiting_ms"] == row["probe_ms"]["/healthz"]
    if Path("/proc/self/status").is_file():
        assert row["rss_before_mib"] > 0
        if row["peak_rss_mib"] is not None:  # None where the peak cannot be reset (some containers)
            assert row["peak_rss_mib"] >= row["rss_before_mib"] - 1


def test_more_clients_than_threads_it_will_start_is_refused(tiny_checkpoint) -> None:
    done = run_benchmark("service_load", "--checkpoint", str(tiny_checkpoint), "--clients", "501")
    assert done.returncode == 2 and "error: --clients: must be at most 500" in done.stderr
