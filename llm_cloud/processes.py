"""Servers run as child process groups: start, wait for a health URL, stop the whole group.

vLLM (which spawns engine workers), the candidate service and the launcher's Flower processes run this way,
so that stopping one never leaves orphans and never touches other processes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lsc4rec.credentials import TLSFiles, client_context
from lsc4rec.errors import CloudUnavailableError, ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server this process is about to start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_url(host: str, port: int, scheme: str = "http") -> str:
    """The URL of a server listening on ``host:port``; an IPv6 address goes in brackets (RFC 3986)."""
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def check_port_free(host: str, port: int) -> None:
    """A ConfigError when ``host:port`` cannot be listened on: the host is not this machine's, or the port is taken.

    The address family follows the host (``::1`` is IPv6), as uvicorn's own bind does.
    """
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
        raise ConfigError(
            "--host",
            f"must be an address of this machine, got {host!r} ({getattr(exc, 'strerror', None) or exc}).",
        ) from None
    with socket.socket(family, kind) as sock:
        # as uvicorn binds: a socket still closing from an earlier run is no obstacle
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:  # the host resolved, but to no address of this machine
                raise ConfigError(
                    "--host", f"must be an address of this machine, got {host!r} ({exc.strerror})."
                ) from None
            raise ConfigError(
                "--port",
                f"must be free on {host}, but {host}:{port} cannot be used ({exc.strerror}). Pick another.",
            ) from None


@dataclass
class ManagedServer:
    """A running server: its base URL and process; use as a context manager or call :meth:`stop`."""

    url: str
    process: subprocess.Popen
    stopped: bool = field(default=False, init=False)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL to what is left after ``grace_s``.

        The group is signalled even when its leader has already exited: vLLM's engine workers (or a crashed
        service's children) can outlive it in the same group. Only the first call signals, so a later one
        never reaches a group id the system has since given to other processes.
        """
        if self.stopped:
            return
        self.stopped = True
        pgid = self.process.pid
        deadline = time.monotonic() + grace_s
        try:
            _signal_group(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_s)
            while _group_alive(pgid) and time.monotonic() < deadline:  # workers finishing their shutdown
                time.sleep(0.1)
        finally:  # a second Ctrl-C while waiting cuts the grace short, not the kill
            _signal_group(pgid, signal.SIGKILL)
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
    ca: Path | None = None,
) -> ManagedServer:
    """Start ``command`` in a new session (its own process group) and wait until ``url + health_path`` is 200.

    An https ``url`` is verified against the CA file ``ca`` (else the public CAs).

    The new session keeps a terminal's Ctrl-C from reaching the server, so this function stops the group itself
    if anything (a failed start, a timeout, Ctrl-C or SIGTERM during the wait) ends the wait early.
    """
    name = _program_name(command)
    # appended, not replaced: a resumed run's folder keeps the logs of the launches before it, which the error
    # that stopped one told the user to read; the child holds its own copy of the file descriptor
    with open(log_path, "a") as log:
        log.write(f"==> {time.strftime('%Y-%m-%d %H:%M:%S')}: {name} started\n")
        log.flush()
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    server = ManagedServer(url, process)
    try:
        _wait_until_healthy(process, url + health_path, ready_timeout_s, name, log_path, ca)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_until_healthy(
    process: subprocess.Popen,
    health_url: str,
    timeout_s: float,
    name: str,
    log_path: str | Path,
    ca: Path | None,
) -> None:
    verify = client_context(str(ca) if ca else None)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CloudUnavailableError(
                f"{name} exited with code {process.returncode} before it was ready; see {log_path}."
            )
        try:
            if httpx.get(health_url, timeout=2.0, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise CloudUnavailableError(f"{name} was not ready after {timeout_s:.0f} s; see {log_path}.")


def _program_name(command: list[str]) -> str:
    """What to call the server in messages: the module of ``python -m MODULE``, else the program's file name."""
    if len(command) > 2 and command[1] == "-m":
        return command[2]
    return Path(command[0]).name


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
        os.killpg(pgid, sig)


def processes_with_env(name: str, folder: str) -> list[int]:
    """Ids of this user's other processes whose environment sets ``name`` to ``folder`` or a path inside it."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: nothing to find this way
        return []
    exact, inside = f"{name}={folder}".encode(), f"{name}={folder.rstrip('/')}/".encode()
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # another user's process, or one that has just exited
            continue
        if any(var == exact or var.startswith(inside) for var in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


def stop_processes_with_env(name: str, folder: str, grace_s: float = 10.0) -> None:
    """Stop what a server started outside its own process group, found by the environment it inherited.

    Flower's SuperLink starts ``flower-superexec`` in a session of its own, so stopping the SuperLink's group
    leaves it running; every process of a run carries the run's ``FLWR_HOME``. Not every process shows it:
    Ray's agents rename themselves over the memory ``/proc/PID/environ`` reads, and a run stopped early left
    them behind. So the process groups of the processes found (never this process's own) are signalled too,
    and they hold those agents. SIGTERM, then SIGKILL to what is still there after ``grace_s`` (processes
    looked up again, so a reused process id is never signalled; groups only while they still have members).
    """
    stats = process_stats()
    groups = {stats[pid][2] for pid in processes_with_env(name, folder) if pid in stats} - {os.getpgrp()}

    def signal_all(sig: int) -> None:
        for pid in processes_with_env(name, folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        for pgid in groups:
            _signal_group(pgid, sig)

    signal_all(signal.SIGTERM)
    try:
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (processes_with_env(name, folder) or _running(groups)):
            time.sleep(0.1)
    finally:  # a second Ctrl-C while waiting cuts the grace short, not the kill
        groups = _running(groups)
        signal_all(signal.SIGKILL)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (processes_with_env(name, folder) or _running(groups)):
            time.sleep(0.1)


def _running(groups: set[int]) -> set[int]:
    """The process groups among ``groups`` that still have a running member.

    Zombies waiting for init don't count: they hold no resources, and only their parent or init removes them.
    """
    return {pgrp for state, _, pgrp in process_stats().values() if state not in "ZX" and pgrp in groups}


def process_stats() -> dict[int, tuple[str, int, int]]:
    """Every process's (state letter, parent pid, process group), from one pass over ``/proc`` (Linux)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited while being read
            continue
        fields = text[text.rindex(")") + 2 :].split()  # after "pid (name)", which may hold spaces
        stats[int(stat.parent.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return stats


def start_service(
    args: list[str],
    port: int,
    log_path: str | Path,
    ready_timeout_s: float = 120.0,
    tls: TLSFiles | None = None,
) -> ManagedServer:
    """``lsc4rec llm serve ARGS --port PORT`` on 127.0.0.1 with this interpreter, ready on ``/healthz``.

    With ``tls`` it serves https with that certificate, and its readiness is checked against that CA.
    """
    command = [sys.executable, "-m", "llm_cloud.cli", "serve", *args, "--port", str(port)]
    if tls:
        command += ["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    env = {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    return spawn_server(command, url, "/healthz", log_path, env, ready_timeout_s, tls.ca if tls else None)
