"""benchmarks/peak_memory.py: a command's processes, orphans included, summed at their peak."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "peak_memory.py"
ROOT = SCRIPT.parents[1]


def hold(mib: int) -> str:
    """A Python process that touches ``mib`` MiB and holds them for four seconds (both must overlap)."""
    return f"{sys.executable} -c 'import time; b = b\"x\" * ({mib} << 20); time.sleep(4)'"


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").is_file(), reason="needs Linux /proc smaps_rollup")
def test_sums_every_process_even_an_orphan(tmp_path: Path) -> None:
    # the 120 MiB process is orphaned at once (its parent subshell exits) and must still be counted
    command = f"({hold(120)} &); {hold(80)}; exit 3"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--interval",
            "0.2",
            "--json",
            str(tmp_path / "m.json"),
            "--",
            "bash",
            "-c",
            command,
        ],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr  # the command's status
    row = json.loads((tmp_path / "m.json").read_text())["rows"][0]
    assert row["exit status"] == 3
    assert 195 <= row["peak PSS, all processes (MiB)"] < 400  # both processes, each counted once
    assert 120 <= row["peak RSS, largest process (MiB)"] < 195  # the largest alone misses the other
    assert row["most processes at once"] >= 2
    assert row["largest at the peak (PSS MiB)"].startswith('python -c import time; b = b"x" * (120 << 20)')


def test_a_missing_command_is_one_line() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--", "no-such-command-here"],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.startswith("error: cannot start 'no-such-command-here'")
