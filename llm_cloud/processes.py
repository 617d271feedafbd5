"""Servers run as child process groups: start, wait for a health URL, stop the whole group.

Both vLLM (which spawns engine workers) and the candidate service (in tests and benchmarks) run this way, so
that stopping one never leaves orphans and never touches other processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from lsc4rec.errors import CloudUnavailableError

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server this process is about to start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ManagedServer:
    """A running server: its base URL and process; use as a context manager or call :meth:`stop`."""

    url: str
    process: subprocess.Popen

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after ``grace_s``."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> ManagedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spawn_server(
    command: list[str],
    url: str,
    health_path: str,
    log_path: str | Path,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 300.0,
) -> ManagedServer:
    """Start ``command`` in a new session (its own process group) and wait until ``url + health_path`` is 200."""
    log = open(log_path, "w")  # noqa: SIM115 - the child keeps writing to it after this returns
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    server = ManagedServer(url, process)
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CloudUnavailableError(
                f"{command[2]} exited with code {process.returncode} before it was ready; see {log_path}."
            )
        try:
            if httpx.get(url + health_path, timeout=2.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop()
    raise CloudUnavailableError(f"{command[2]} was not ready after {ready_timeout_s:.0f} s; see {log_path}.")


def start_service(
    args: list[str], port: int, log_path: str | Path, ready_timeout_s: float = 120.0
) -> ManagedServer:
    """``lsc4rec llm serve ARGS --port PORT`` on 127.0.0.1 with this interpreter, ready on ``/healthz``."""
    command = [sys.executable, "-m", "llm_cloud.cli", "serve", *args, "--port", str(port)]
    env = {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return spawn_server(command, f"http://127.0.0.1:{port}", "/healthz", log_path, env, ready_timeout_s)
