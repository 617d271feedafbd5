"""Servers started as process groups never outlive a failed start, an interrupt or their own leader."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_cloud import processes
from llm_cloud.processes import ManagedServer, free_port, server_url, spawn_server
from lsc4rec.errors import CloudUnavailableError


def _sleeper(pid_file: Path) -> str:
    """Python source of a process that writes its pid to ``pid_file`` and sleeps (it never serves health)."""
    return f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as stopped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return state.split()[1] not in ("Z", "X")


def _pid_from(pid_file: Path) -> int:
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text()):
        assert time.monotonic() < deadline, "the test process never started"
        time.sleep(0.05)
    return int(pid_file.read_text())


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_server_that_never_gets_healthy_is_stopped_and_named(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    command = [sys.executable, "-c", _sleeper(pid_file)]
    with pytest.raises(CloudUnavailableError, match=r"python\S* was not ready after 3 s"):
        spawn_server(
            command, f"http://127.0.0.1:{free_port()}", "/health", tmp_path / "log", ready_timeout_s=3
        )
    assert _wait_gone(_pid_from(pid_file))


def test_an_interrupt_during_the_wait_stops_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C does not reach a new session: the waiting parent must stop the group before it lets go."""
    pid_file = tmp_path / "pid"

    def interrupted(*_: object) -> None:
        _pid_from(pid_file)  # the server is up, not yet healthy
        raise KeyboardInterrupt

    monkeypatch.setattr(processes, "_wait_until_healthy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        spawn_server(
            [sys.executable, "-c", _sleeper(pid_file)], "http://127.0.0.1:1", "/health", tmp_path / "log"
        )
    assert _wait_gone(_pid_from(pid_file))


def test_stop_reaches_workers_whose_leader_has_exited(tmp_path: Path) -> None:
    """Like vLLM's engine workers: the group outlives its leader, and stopping the server stops the group."""
    pid_file = tmp_path / "pid"
    leader = (
        "import subprocess, sys; "
        f"subprocess.Popen([sys.executable, '-c', {_sleeper(pid_file)!r}])"  # the leader exits at once
    )
    server = ManagedServer(
        "http://127.0.0.1:1", subprocess.Popen([sys.executable, "-c", leader], start_new_session=True)
    )
    worker = _pid_from(pid_file)
    server.process.wait(20)
    assert _alive(worker)
    server.stop()
    assert _wait_gone(worker)
    server.stop()  # stopping twice is harmless


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_to_an_entry_point_stops_the_servers_it_started(tmp_path: Path, signum: int) -> None:
    """``timeout`` or a stopped job sends SIGTERM, a closed terminal or a dropped ssh session SIGHUP; every entry
    point (``run_main``) must unwind and stop its servers.

    Python's default for both ends the process without running ``finally``, and a server in its own session would
    outlive it (a benchmark killed by ``timeout`` used to leave its candidate service running).
    """
    pid_file = tmp_path / "pid"
    port = free_port()
    entry_point = f"""
import sys, time
from llm_cloud.processes import spawn_server
from lsc4rec.errors import run_main

def main():
    command = [sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
    with spawn_server(command, "http://127.0.0.1:{port}", "/", {str(tmp_path / "log")!r}) as server:
        open({str(pid_file)!r}, "w").write(str(server.process.pid))
        time.sleep(120)

run_main(main)
"""
    parent = subprocess.Popen([sys.executable, "-c", entry_point], cwd=processes.REPO_ROOT)
    server = _pid_from(pid_file)
    try:
        parent.send_signal(signum)
        assert parent.wait(30) == 128 + signum
        assert _wait_gone(server)
    finally:  # a failing run must not leave the server behind either
        processes._signal_group(server, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds processes through /proc (Linux)")
def test_processes_started_outside_the_group_are_found_and_stopped_by_their_environment(
    tmp_path: Path,
) -> None:
    """As Flower's SuperLink detaches flower-superexec: a process in a session of its own, found by its env.

    Its group goes too, with a member whose environment does not show the variable (as Ray's agents, which
    write their names over it); a process found in this process's own group is stopped alone.
    """
    home = tmp_path / "flwr-home"
    pid_file = tmp_path / "hidden.pid"
    other = subprocess.Popen(  # a sibling folder whose name only starts like the run's
        ["sleep", "120"], env={"FLWR_HOME": f"{home}-other"}, start_new_session=True
    )
    detached = subprocess.Popen(  # starts a member of its group without the variable, then becomes `sleep`
        ["sh", "-c", f"env -i sleep 120 & echo $! > {pid_file}; exec sleep 120"],
        env={"FLWR_HOME": str(home / "supernode-0"), "PATH": "/usr/bin:/bin"},
        start_new_session=True,
    )
    same_group = subprocess.Popen(["sleep", "120"], env={"FLWR_HOME": str(home / "flwr-run")})
    hidden = _pid_from(pid_file)
    deadline = time.monotonic() + 20  # $! is known at fork: wait until it has exec'd `sleep` under `env -i`
    while Path(f"/proc/{hidden}/environ").read_bytes():
        assert time.monotonic() < deadline, "the hidden member never dropped its environment"
        time.sleep(0.05)
    try:
        assert processes.processes_with_env("FLWR_HOME", str(home)) == sorted([detached.pid, same_group.pid])
        processes.stop_processes_with_env("FLWR_HOME", str(home), grace_s=5.0)
        assert detached.wait(5) == -signal.SIGTERM
        assert same_group.wait(5) == -signal.SIGTERM  # and this test, in the same group, still runs
        assert _wait_gone(hidden)
        assert processes.processes_with_env("FLWR_HOME", str(home)) == []
        assert other.poll() is None  # another run's process is left alone
    finally:
        processes._signal_group(detached.pid, signal.SIGKILL)  # the hidden member too
        for process in (other, detached, same_group):
            process.kill()
            process.wait()


def test_an_ipv6_host_goes_in_brackets_in_a_url() -> None:
    """``http://::1:8000`` is no URL: httpx would read a port of ':1:8000' and `vllm-serve --host ::1` crash."""
    assert server_url("::1", 8000) == "http://[::1]:8000"
    assert server_url("127.0.0.1", 8443, "https") == "https://127.0.0.1:8443"


def test_a_log_keeps_what_earlier_starts_wrote(tmp_path: Path) -> None:
    """A resumed run starts its servers again: the log the first launch's error named must survive it."""
    log = tmp_path / "service.log"
    log.write_text("the first launch's traceback\n")
    port = free_port()
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with spawn_server(command, f"http://127.0.0.1:{port}", "/", log):
        pass
    lines = log.read_text().splitlines()
    assert lines[0] == "the first launch's traceback" and lines[1].endswith(": http.server started")
