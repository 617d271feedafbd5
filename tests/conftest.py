"""Shared fixtures: the data root, an isolated environment, a synthetic catalogue, a tiny LLM and its service."""

from __future__ import annotations

import importlib.util
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from clients.cloud import OUTAGES
from llm_cloud.processes import free_port, start_service
from llm_cloud.train import train_llm
from lsc4rec import records
from lsc4rec.config import RunConfig
from lsc4rec.data.dataset import SequenceDataset
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.errors import run_main
from lsc4rec.outcomes import StageOutcome
from lsc4rec.protocol import API_KEY_ENV

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop(API_KEY_ENV, None)  # a key in the developer's shell would lock the tests' services

# Test models are tiny: one thread avoids OpenMP spin-waiting when the two cores are shared (60 training steps
# of a test SRM went from 0.1 s to 30 s with 2 threads under load).
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` in its own process from the repository root (relative paths in ``args`` land
    there), as a user or the launcher runs it; output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_benchmark(
    name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python benchmarks/NAME.py ARGS`` from the repository root with it on ``PYTHONPATH``, as the README runs
    them; ``env`` replaces the environment (``PYTHONPATH`` is still set)."""
    root = BENCHMARKS.parent
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
        cwd=root,
        env={**(os.environ if env is None else env), "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/NAME.py`` as a module (the folder is not a package), for its functions."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run(main, prog, *args)``: an entry point's ``main`` run here with ``argv``, from the repository root,
    through the same ``run_main`` edge as :func:`run_module` and :func:`run_benchmark`, answered as they answer.

    For the tables of bad input whose every row ends before any work: a row then costs milliseconds instead of a
    new interpreter's seconds of imports. The process edge itself (nothing else on stderr) keeps its own tests
    in a process of their own. The signal handlers ``run_main`` installs are put back.
    """
    monkeypatch.chdir(BENCHMARKS.parent)

    def run(main: Callable[[], object], prog: str, *args: str) -> subprocess.CompletedProcess[str]:
        monkeypatch.setattr(sys, "argv", [prog, *args])
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
        try:
            run_main(main)
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([prog, *args], status, out, err)

    return run


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared datasets (``$LSC4REC_DATA_DIR`` or ``../shared/data``); tests needing them skip without."""
    root = Path(os.environ.get("LSC4REC_DATA_DIR", SHARED_DATA))
    if not (root / "ml-latest-small" / "ratings.csv").exists():
        pytest.skip(f"shared datasets not found at {root}; set LSC4REC_DATA_DIR")
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep prepared datasets and Flower state of tests out of the user's cache and home.

    Session-scoped, so that it is in place before the session fixtures that prepare data and train checkpoints.
    """
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(base / "cache"))
        patch.setenv("FLWR_HOME", str(base / "flwr-home"))
        yield


def make_dataset(sequences: list[list[int]], num_items: int | None = None) -> SequenceDataset:
    """A prepared dataset from literal sequences (items 1..N), for hand-worked tests."""
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
    n = num_items or int(items.max())
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    return SequenceDataset(
        items,
        offsets,
        np.array([str(u) for u in range(len(sequences))]),
        np.array([str(i) for i in range(1, n + 1)]),
        np.array([""] * n),
        {"name": "synthetic"},
    )


# A learnable synthetic catalogue and a tiny cloud LLM: the LLM, device and federation tests share them.
NUM_ITEMS = 40
TINY_SETTINGS = [
    "llm.hidden=64",
    "llm.heads=1",
    "llm.layers=1",
    "llm.epochs=4",
    "llm.batch_size=16",
    "llm.lr=0.01",
    "llm.max_len=20",
    "llm.dropout=0.0",
    "llm.refit_epochs=1",  # off by default; the tests train it
    "data.lag=2",
]


def synthetic_dataset(num_users: int = 60, num_items: int = NUM_ITEMS, seed: int = 0) -> SequenceDataset:
    """Users walk the catalogue in steps of one (item i is followed by i + 1, wrapping): easy to learn."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(num_users):
        start, length = rng.integers(num_items), rng.integers(8, 15)
        sequences.append((start + np.arange(length)) % num_items + 1)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    return SequenceDataset(
        np.concatenate(sequences).astype(np.int64),
        offsets,
        np.array([f"u{u}" for u in range(num_users)]),
        np.array([str(i) for i in range(num_items)]),
        np.array([f"Item number {i}" for i in range(1, num_items + 1)]),
        {"name": "synthetic", "kcore": 1, "numbering": "sequential", "seed": seed},
    )


NODES = 4
FEDERATION_SETTINGS = [
    "data.kcore=1",
    "data.numbering=sequential",
    "srm.max_len=20",
    "srm.hidden=32",
    "llm.k=10",
    f"federation.num_nodes={NODES}",
    "federation.fraction_train=0.5",
    "federation.fraction_evaluate=0.5",
    "federation.bins=10",
    "federation.local_epochs=1",
    "federation.timeout_s=5",
    "federation.retries=1",
]


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A P5-format file of 24 users walking a 40-item catalogue (item i is followed by i + 1)."""
    folder = tmp_path_factory.mktemp("synthetic")
    dataset = synthetic_dataset(num_users=24, seed=1)
    lines = [" ".join(map(str, [u + 1, *dataset.sequence(u)])) for u in range(dataset.num_users)]
    (folder / "sequential_data.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="session")
def federation_config(synthetic_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    return RunConfig().override([*TINY_SETTINGS, *FEDERATION_SETTINGS, f"data.dataset={synthetic_folder}"])


@pytest.fixture(scope="session")
def federation_checkpoint(federation_config: RunConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fed-ckpt") / "llm"
    train_llm(
        federation_config,
        load_or_prepare(federation_config.data, federation_config.seed),
        out,
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def service(federation_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real candidate service (transformers engine) on 127.0.0.1, stopped by process group."""
    log = tmp_path_factory.mktemp("fed-service") / "service.log"
    with start_service(
        ["--checkpoint", str(federation_checkpoint), "--engine", "transformers"], free_port(), log
    ) as s:
        yield s.url


ALPHAS = (0.0, 0.5, 1.0)  # fusion weights of the hand-built outcomes


# four users' stale-list NDCG@10 at α 0 / 0.5 / 1 where the blend beats the better single model by 0.1 with a
# paired se of 0.129 (per-user gains 0.4, -0.2, 0.2, 0: mean 0.1, variance 0.2 / 3); SRM-only better than LLM-only
_BETTER, _GAIN = np.full(4, 0.2), np.array([0.4, -0.2, 0.2, 0.0])
BLEND_WITHIN_A_SE = np.stack([_BETTER, _BETTER + _GAIN, _BETTER - 0.1], 1)  # [users, α]


def final_sums(outcome: StageOutcome, measure: str = "drift") -> dict[str, Any]:
    """The fleet's sums of a final evaluation whose validation and test outcomes are both ``outcome``."""
    return {
        key: value
        for stage in ("valid", "test")
        for key, value in outcome.to_metrics(records.outcome_prefix(stage, measure)).items()
    }


def two_signals(bins: int) -> dict[str, StageOutcome]:
    """The four users of ``BLEND_WITHIN_A_SE`` under request signals "0" and "1", which rank user 0 resp. 1 first.

    A fresh list helps user 1 under SRM-only and user 0 under the blend, so at a budget of one user in four the
    signal to gate on is "1" read at SRM-only (what a margin of one se serves) and "0" read at the blend.
    """
    fresh = BLEND_WITHIN_A_SE + np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0] * 3, [0.0] * 3])
    scores = {"0": [0.875, 0.125, 0.375, 0.625], "1": [0.125, 0.875, 0.375, 0.625]}
    return {m: outcome_from_users(np.array(x), BLEND_WITHIN_A_SE, fresh, bins) for m, x in scores.items()}


def outcome_from_users(score: np.ndarray, stale: np.ndarray, fresh: np.ndarray, bins: int) -> StageOutcome:
    """Outcome of users with request signal ``score`` [U] and per-alpha NDCG@10 ``stale``/``fresh`` [U, A]."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    bin_of = np.minimum((score * bins).astype(int), bins - 1)
    one_hot = np.eye(bins)[bin_of]  # [U, bins]
    return StageOutcome(
        alphas=ALPHAS,
        bin_edges=edges,
        users=len(score),
        stale_ndcg=stale.sum(0),
        stale_hr=(stale > 0).sum(0).astype(float),
        fresh_ndcg=fresh.sum(0),
        fresh_hr=(fresh > 0).sum(0).astype(float),
        gain_sq=((fresh - stale) ** 2).sum(0),
        pair_sq_first=((stale - stale[:, :1]) ** 2).sum(0),
        pair_sq_last=((stale - stale[:, -1:]) ** 2).sum(0),
        stale_recall=float((stale > 0).any(1).sum()),
        fresh_recall=float((fresh > 0).any(1).sum()),
        bin_count=one_hot.sum(0),
        bin_stale_ndcg=stale.T @ one_hot,
        bin_fresh_ndcg=fresh.T @ one_hot,
        requests=int((score > 0.5).sum()),
    )


@pytest.fixture(autouse=True)
def _forget_cloud_outages() -> None:
    """Each test's ClientApps and clients start trusting their service: an outage of another's is no business of theirs."""
    OUTAGES.clear()


@contextmanager
def answering_server(
    *replies: bytes | tuple[int, bytes],
    trickle_s: float = 0.0,
    health: tuple[int, bytes] | None = None,
    encoding: str | None = None,
) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 that answers POSTs with ``replies``; yields its URL.

    It stands in for a broken or foreign service (a candidate service or vLLM) that the code must survive.
    The n-th POST gets the n-th reply (the last one from then on), each a body answered with 200 or a
    (status, body) pair. With ``trickle_s`` the answer, headers first, goes out a byte every ``trickle_s`` s.
    A GET gets ``health``, else http.server's 501. ``encoding`` is sent as every answer's Content-Encoding.
    """
    answered = itertools.count()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if health is None:
                self.send_error(HTTPStatus.NOT_IMPLEMENTED)
            else:
                self.answer(*health)

        def do_POST(self) -> None:  # the name http.server dispatches to
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            reply = replies[min(next(answered), len(replies) - 1)]
            self.answer(*(reply if isinstance(reply, tuple) else (200, reply)))

        def answer(self, status: int, body: bytes) -> None:
            encoded = f"Content-Encoding: {encoding}\r\n" if encoding else ""
            head = f"HTTP/1.0 {status} Reply\r\nContent-Type: application/json\r\n{encoded}\r\n"
            answer = head.encode() + body
            try:
                for chunk in [answer[i : i + 1] for i in range(len(answer))] if trickle_s else [answer]:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    time.sleep(trickle_s)
            except OSError:  # the client hung up in the middle of a trickle
                pass

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def disk_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A list that ``os.fsync`` (with the name of the file or folder synced) and ``os.replace`` append to."""
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def logged_fsync(fd: int) -> None:
        events.append("fsync " + Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        fsync(fd)

    def logged_replace(src: Path, dst: Path) -> None:
        events.append("replace")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    return events


@contextmanager
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """A server on 127.0.0.1 that accepts connections and never answers: a hung service. Yields its URL and
    the connections it accepted so far."""
    connections: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as silent:

        def accept() -> None:
            with suppress(OSError):
                while True:
                    connections.append(silent.accept()[0])

        threading.Thread(target=accept, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{silent.getsockname()[1]}", connections
        finally:
            for connection in connections:
                connection.close()
