"""Wall time and peak memory of a whole command: every process it starts, summed (Linux only).

``/usr/bin/time -v`` reports one process's peak RSS, the largest among those it accounts for. A federation is
many processes at once (the candidate service with its LLM, Flower's simulation, Ray's daemons and workers), so
that figure understates what a laptop must hold. This script runs the command, polls every process it started,
and records the peak of their summed PSS (proportional set size: shared library pages counted once across
processes, split between them) beside the summed RSS and the largest process's RSS. It makes itself the
processes' subreaper, so a process whose parent exits (a daemon started with ``setsid``, Ray's helpers) stays
counted. Samples are taken every ``--interval`` seconds, so a peak shorter than that can be missed; the script
exits with the command's status. Example:

    python benchmarks/peak_memory.py --json runs/bench/peak_memory.json -- ./run_federation.sh --out runs/mem
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from llm_cloud.processes import process_stats
from lsc4rec.errors import LSC4RecError, run_main
from lsc4rec.tables import parse_args, report

# linux/prctl.h: orphaned descendants are re-parented to this process, not to init
PR_SET_CHILD_SUBREAPER = 36
MIB = 1024 * 1024
TOP = 4  # processes named at the peak, largest first


def _memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of ``pid`` in KiB from ``/proc/PID/smaps_rollup``; (0, 0) when it has gone or is a zombie."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return 0, 0
    fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    return int(fields.get("Pss", "0 kB").split()[0]), int(fields.get("Rss", "0 kB").split()[0])


def _command_line(pid: int) -> str:
    """The start of ``pid``'s command line (program and first arguments), to tell the processes apart."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    return " ".join(
        Path(w.decode(errors="replace")).name if i == 0 else w.decode(errors="replace")
        for i, w in enumerate(words[:3])
    )[:60]


def descendants(root: int) -> dict[int, str]:
    """Every process below ``root`` (pid to state letter), from one pass over ``/proc``."""
    stats = process_stats()
    children: dict[int, list[int]] = {}
    for pid, (_, parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    found, stack = {}, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found[pid] = stats[pid][0]
        stack += children.get(pid, [])
    return found


def measure(command: list[str], interval: float) -> dict[str, float | int | str]:
    """Run ``command`` to its end, sampling its processes every ``interval`` seconds; the peaks it reached."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    me = os.getpid()
    start = time.perf_counter()
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        raise LSC4RecError(
            f"cannot start {command[0]!r}: {exc.strerror}. Give a program on PATH or a path to one."
        ) from None
    peak = {"pss": 0, "rss": 0, "largest": 0, "processes": 0}
    holders: list[tuple[str, int]] = []
    try:
        while child.poll() is None:
            pids = descendants(me)
            for pid, state in pids.items():
                if state == "Z" and pid != child.pid:  # an orphan re-parented here: reap it, as init would
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
            memory = {pid: _memory_kib(pid) for pid in pids}
            if (pss := sum(pss for pss, _ in memory.values())) > peak["pss"]:
                peak["pss"] = pss
                largest = sorted(memory, key=lambda pid: memory[pid][0], reverse=True)[:TOP]
                holders = [(_command_line(pid), memory[pid][0]) for pid in largest]
            peak["rss"] = max(peak["rss"], sum(rss for _, rss in memory.values()))
            peak["largest"] = max([peak["largest"], *(rss for _, rss in memory.values())])
            peak["processes"] = max(peak["processes"], len(pids))
            time.sleep(interval)
    finally:  # stopped early (Ctrl-C, SIGTERM): the command is asked to stop, and is waited for
        if child.poll() is None:
            child.terminate()
            child.wait()
    return {
        "exit status": child.returncode,
        "wall s": time.perf_counter() - start,
        "peak PSS, all processes (MiB)": peak["pss"] * 1024 / MIB,
        "peak RSS, all processes (MiB)": peak["rss"] * 1024 / MIB,
        "peak RSS, largest process (MiB)": peak["largest"] * 1024 / MIB,
        "most processes at once": peak["processes"],
        "largest at the peak (PSS MiB)": "; ".join(
            f"{name}: {pss * 1024 / MIB:.0f}" for name, pss in holders
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--json", help="write the table as JSON to this file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to measure, after --")
    args = parse_args(parser)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not 0 < args.interval < math.inf:  # NaN too
        parser.error(f"--interval must be a finite number of seconds > 0, got {args.interval}")
    if not command:
        parser.error("give the command to measure after --, e.g. -- ./run_federation.sh")
    if not Path("/proc/self/smaps_rollup").is_file():
        raise LSC4RecError("this benchmark needs Linux's /proc/PID/smaps_rollup (kernel 4.14 or later).")
    row = {"command": shlex.join(command), **measure(command, args.interval)}
    report("Wall time and peak memory of one command", [row], list(row), args.json)
    sys.exit(row["exit status"])  # a failed command fails the benchmark too


if __name__ == "__main__":
    run_main(main)
