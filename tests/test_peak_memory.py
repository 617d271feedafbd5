"""benchmarks/peak_memory.py: a command's processes, orphans included, summed at their peak."""

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import run_benchmark

BARE = {"PATH": "/usr/bin:/bin"}  # no inherited environment: the script must name what it needs


def hold(mib: int) -> str:
    """A Python process that touches ``mib`` MiB and holds them for four seconds (both must overlap)."""
    return f"{sys.executable} -c 'import time; b = b\"x\" * ({mib} << 20); time.sleep(4)'"


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").is_file(), reason="needs Linux /proc smaps_rollup")
def test_sums_every_process_even_an_orphan(tmp_path: Path) -> None:
    # the 120 MiB process is orphaned at once (its parent subshell exits) and must still be counted
    command = f"({hold(120)} &); {hold(80)}; exit 3"
    args = ("--interval", "0.2", "--json", str(tmp_path / "m.json"), "--", "bash", "-c", command)
    done = run_benchmark("peak_memory", *args, env=BARE, timeout=60)
    assert done.returncode == 3, done.stderr  # the command's status
    row = json.loads((tmp_path / "m.json").read_text())["rows"][0]
    assert row["exit status"] == 3
    assert 195 <= row["peak PSS, all processes (MiB)"] < 400  # both processes, each counted once
    assert 120 <= row["peak RSS, largest process (MiB)"] < 195  # the largest alone misses the other
    assert row["most processes at once"] >= 2
    assert row["largest at the peak (PSS MiB)"].startswith('python -c import time; b = b"x" * (120 << 20)')


def test_a_missing_command_is_one_line() -> None:
    done = run_benchmark("peak_memory", "--", "no-such-command-here", env=BARE, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: cannot start 'no-such-command-here'")


@pytest.mark.parametrize("interval", ["nan", "inf", "0"])
def test_an_interval_that_is_no_duration_is_refused_before_the_command_starts(
    tmp_path: Path, interval: str
) -> None:
    started = tmp_path / "started"
    done = run_benchmark(
        "peak_memory", "--interval", interval, "--", "touch", str(started), env=BARE, timeout=60
    )
    assert (
        done.returncode == 2
        and f"--interval must be a finite number of seconds > 0, got {float(interval)}" in done.stderr
    )
    assert not started.exists()
