"""Launching a whole federation on one machine: data, the cloud LLM, the candidate service, Flower.

What ``run_federation.sh`` runs: prepare the dataset; train the item-token LLM unless a checkpoint for the same
data and settings is cached; start the candidate service (transformers engine, or vLLM in its own venv); start
a SuperLink and ``flwr run`` the app with one supernode per node (Flower's simulation, or its deployment runtime
with one ``flower-supernode`` process per node); stop every process it started (by process group, in
``finally``); return the report's path.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from pathlib import Path

import torch

from clients.srm import build_srm
from llm_cloud.processes import (
    REPO_ROOT,
    ManagedServer,
    free_port,
    spawn_server,
    start_service,
    stop_processes_with_env,
)
from lsc4rec import records
from lsc4rec.config import RunConfig
from lsc4rec.credentials import TLSFiles, make_loopback_tls, make_node_key
from lsc4rec.data.partition import fleet_size
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.data.sources import cache_dir
from lsc4rec.data.split import TemporalSplit
from lsc4rec.errors import ConfigError, DataFormatError, LSC4RecError
from lsc4rec.protocol import SERVICE_CA_ENV
from lsc4rec.runs import new_federation_dir, output_path, write_json
from server.checkpoint import complete_checkpoints, latest_checkpoint, read_ledger
from server.report import SUMMARY_FILE, read_rounds

FEDERATION = "lsc4rec-local"
RUNTIMES = ("simulation", "deployment")
MAX_LOCAL_SUPERNODES = 16  # each one is a few processes and a few hundred MB
LAUNCH_FILE = "launch.json"
_LAUNCH_REMEDY = "Fix it, delete it (the defaults), or pass all of --engine, --runtime and --vllm-eager or --no-vllm-eager."


@dataclasses.dataclass(frozen=True)
class Launch:
    """How the launcher ran a federation: its own options, beside the run's settings (``config.json``).

    They change how the run is served and hosted, not what it computes, so they are not settings; but a user who
    continues a run with ``--resume`` expects it on the engine and runtime it started with, so the run folder
    keeps them (``launch.json``) and :meth:`chosen` starts from them.
    """

    engine: str = "transformers"
    runtime: str = "simulation"
    vllm_eager: bool = False

    def save(self, run_dir: Path) -> None:
        write_json(run_dir / LAUNCH_FILE, dataclasses.asdict(self))

    @classmethod
    def chosen(
        cls,
        engine: str | None,
        runtime: str | None,
        vllm_eager: bool | None,
        resumed: Path | None = None,
    ) -> Launch:
        """The options given (not None), else those the ``resumed`` run was last launched with, else the defaults.

        A run folder without ``launch.json`` (one the benchmarks made over the in-process grid) starts from the
        defaults. vLLM's eager mode is kept only while the engine stays vLLM.
        """
        given_all = None not in (engine, runtime, vllm_eager)
        base = cls._read(resumed / LAUNCH_FILE) if resumed is not None and not given_all else cls()
        engine = engine or base.engine
        return cls(
            engine=engine,
            runtime=runtime or base.runtime,
            vllm_eager=vllm_eager if vllm_eager is not None else base.vllm_eager and engine == "vllm",
        )

    @classmethod
    def _read(cls, path: Path) -> Launch:
        from llm_cloud.engines import ENGINES

        if not path.is_file():
            return cls()
        try:
            saved = json.loads(path.read_text())
            launch = cls(**saved)
        except (OSError, ValueError, TypeError) as exc:
            raise DataFormatError(
                path,
                f"must hold the launcher's options as written by a run ({exc}). {_LAUNCH_REMEDY}",
            ) from None
        for name, value, choices in (
            ("engine", launch.engine, ENGINES),
            ("runtime", launch.runtime, RUNTIMES),
        ):
            if value not in choices:
                raise DataFormatError(
                    path,
                    f"{name} must be one of {'|'.join(choices)}, got {value!r}. {_LAUNCH_REMEDY}",
                )
        if not isinstance(launch.vllm_eager, bool):
            raise DataFormatError(
                path, f"vllm_eager must be true or false, got {launch.vllm_eager!r}. {_LAUNCH_REMEDY}"
            )
        return launch


def llm_cache_folder(cfg: RunConfig) -> Path:
    """Where the LLM for these data and LLM settings is cached: the folder's name hashes what training reads.

    That is the prepared data's contents (not where they were read from, nor how the folder was spelled: a
    ratings file edited in place must not find the LLM trained on the old one, which may have trained on what
    are now its test targets), the lag, the seed, a pretrained base's file, every LLM setting but K, which
    only the requests carry, and the version of the training code's recipe (``TRAINING_RECIPE``).
    """
    from llm_cloud.train import TRAINING_RECIPE

    dataset = load_or_prepare(cfg.data, cfg.seed)
    data = hashlib.sha1(dataset.items.tobytes() + dataset.offsets.tobytes())
    data.update("\n".join([*dataset.item_ids.tolist(), *dataset.titles.tolist()]).encode())
    llm = {key: value for key, value in dataclasses.asdict(cfg.llm).items() if key != "k"}
    if cfg.llm.base != "scratch":  # a path: the file it names, which may be replaced under the same name
        base = Path(cfg.llm.base).resolve()
        llm["base"] = [str(base), *((base.stat().st_size, base.stat().st_mtime_ns) if base.exists() else ())]
    key = json.dumps([data.hexdigest(), cfg.data.lag, llm, cfg.seed, TRAINING_RECIPE], sort_keys=True)
    name = f"{Path(cfg.data.dataset).name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    return cache_dir() / "llm" / name


def llm_checkpoint(cfg: RunConfig) -> Path:
    """The cached LLM checkpoint for these data and LLM settings; trained on first use (cloud view only).

    Runs that need the same checkpoint at once (say, one per SRM on a fresh machine) take turns on a lock file
    beside it: the first trains, the others wait and then use its checkpoint, so no two write the same folder.
    """
    folder = llm_cache_folder(cfg)
    from llm_cloud.checkpoint import check_weights, read_template
    from llm_cloud.train import TRAIN_RESULT_FILE, train_llm

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:  # the system frees it if we die
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"==> waiting for another run that trains this LLM: {folder}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / TRAIN_RESULT_FILE).exists():  # written last, so an interrupted training is trained again
            try:
                read_template(folder)  # every file there, the template agreeing with the item map
                check_weights(folder)
            except ConfigError as exc:
                raise LSC4RecError(
                    f"the cached LLM checkpoint {folder} is damaged ({exc}). Delete that folder: the next run "
                    "trains it again."
                ) from None
            print(f"==> LLM checkpoint (cached): {folder}", flush=True)
            return folder
        print(f"==> training the cloud LLM (first run for these settings): {folder}", flush=True)
        train_llm(cfg, load_or_prepare(cfg.data, cfg.seed), folder)
    return folder


@contextmanager
def candidate_service(
    cfg: RunConfig,
    checkpoint: Path,
    engine: str,
    run_dir: Path,
    eager: bool = False,
    tls: TLSFiles | None = None,
) -> Iterator[ManagedServer]:
    """The candidate service on 127.0.0.1 (and vLLM behind it for ``engine == "vllm"``), stopped on exit.

    ``eager`` starts vLLM without torch.compile: ready sooner, a little slower per request (BENCHMARKS.md).
    With ``tls`` the service speaks https (vLLM, on the service's side of the link, stays plain http).

    The checkpoint must number items as this run's data does; a checkpoint from other data is refused here,
    before anything starts, because it would otherwise answer with other items and no error at all.
    """
    from llm_cloud.checkpoint import check_same_items

    check_same_items(checkpoint, load_or_prepare(cfg.data, cfg.seed))
    with ExitStack() as stack:
        args = ["--checkpoint", str(checkpoint), "--engine", engine]
        if engine == "vllm":
            from llm_cloud.vllm_server import start_vllm

            mode = "eager" if eager else "a minute or more on CPU"
            print(f"==> starting vLLM ({mode}; log: {run_dir / 'vllm.log'})", flush=True)
            vllm = stack.enter_context(start_vllm(checkpoint, free_port(), run_dir / "vllm.log", eager=eager))
            args += ["--vllm-url", vllm.url]
        print("==> starting the candidate service", flush=True)
        yield stack.enter_context(start_service(args, free_port(), run_dir / "service.log", tls=tls))


@contextmanager
def superlink(
    run_dir: Path, runtime: str, tls: TLSFiles | None = None
) -> Iterator[tuple[str, dict[str, str]]]:
    """A SuperLink on 127.0.0.1 with its own FLWR_HOME; yields its address and the environment for ``flwr run``.

    ``runtime`` is ``simulation`` (the SuperLink runs the nodes itself) or ``deployment`` (nodes connect to it
    as ``flower-supernode`` processes, as edge boxes do). With ``tls`` it serves https with that certificate,
    ``flwr run`` trusts that CA, and it admits only the supernodes whose keys were registered with it.
    """
    home = run_dir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()  # one HTTP port serves the Control, Fleet and runtime APIs
    address = f"127.0.0.1:{port}"
    trust = f"root-certificates = {json.dumps(str(tls.ca))}" if tls else "insecure = true"  # a TOML string
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{FEDERATION}"\n\n[superlink.{FEDERATION}]\naddress = "{address}"\n{trust}\n'
    )
    env = {"FLWR_HOME": str(home), **_flower_env(tls)}
    security = ["--insecure"]
    if tls:  # the options a real server host gives it (README)
        security = [
            "--ssl-ca-certfile",
            str(tls.ca),
            "--ssl-certfile",
            str(tls.cert),
            "--ssl-keyfile",
            str(tls.key),
            "--enable-supernode-auth",
        ]
    command = [
        _venv_bin("flower-superlink"),
        *security,
        *(["--simulation"] if runtime == "simulation" else []),
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(home / "state.db"),
    ]
    try:
        url = f"{'https' if tls else 'http'}://{address}"
        ca = tls.ca if tls else None
        with spawn_server(command, url, "/health", run_dir / "superlink.log", env, 120.0, ca):
            yield address, env
    finally:  # what Flower started in sessions of its own (the SuperLink's flower-superexec)
        stop_processes_with_env("FLWR_HOME", str(home))


@contextmanager
def supernodes(
    address: str,
    nodes: int,
    run_dir: Path,
    tls: TLSFiles | None = None,
    control_env: dict[str, str] | None = None,
) -> Iterator[None]:
    """One ``flower-supernode`` per node on this machine, each as an edge box would start it (README).

    Each gets its own FLWR_HOME and log, and its partition from ``--node-config``; each is its own process
    group (it starts a ``flower-superexec`` child), stopped on exit. With ``tls`` each verifies the SuperLink
    and the candidate service against its CA, as a box given ``--root-certificates`` and
    ``LSC4REC_SERVICE_CA`` does, and signs its requests with a key of its own, registered first with
    ``flwr supernode register`` (in ``control_env``, the environment ``flwr`` reaches the SuperLink with).
    """
    with ExitStack() as stack:
        for partition in range(nodes):
            home = run_dir / "flwr-home" / f"supernode-{partition}"
            home.mkdir(parents=True, exist_ok=True)
            port = free_port()
            security = ["--insecure"]
            if tls:
                private, public = make_node_key(tls.ca.parent / f"supernode-{partition}")
                _register_node(public, control_env or {})
                security = ["--root-certificates", str(tls.ca), "--auth-supernode-private-key", str(private)]
            command = [
                _venv_bin("flower-supernode"),
                *security,
                "--superlink",
                address,
                "--port",
                str(port),
                "--node-config",
                f"{records.PARTITION}={partition} {records.NUM_PARTITIONS}={nodes}",
            ]
            log = run_dir / f"supernode-{partition}.log"
            env = {"FLWR_HOME": str(home), **_flower_env(tls)}
            stack.enter_context(spawn_server(command, f"http://127.0.0.1:{port}", "/health", log, env, 120.0))
        yield


def _register_node(public_key: Path, control_env: dict[str, str]) -> None:
    """``flwr supernode register``: admit the box holding the private half of ``public_key`` to the SuperLink."""
    command = [_venv_bin("flwr"), "supernode", "register", str(public_key), FEDERATION]
    done = subprocess.run(
        command, env={**os.environ, **control_env}, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise LSC4RecError(
            f"flwr supernode register {public_key} failed (exit code {done.returncode}): "
            f"{(done.stdout + done.stderr).strip()[-300:]}"
        )


def _venv_bin(program: str = "") -> str:
    """A program of this interpreter's environment, Flower's here (its bin folder when none is named)."""
    return str(Path(sys.executable).parent / program)


def _flower_env(tls: TLSFiles | None = None) -> dict[str, str]:
    """What Flower's processes need: this repository importable, ``flower-superexec`` on PATH, one thread each.

    One OpenMP thread: the small models of many nodes share the machine's cores. With ``tls``, also the CA that
    the nodes' ClientApps verify the candidate service against.
    """
    return {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
        "PATH": f"{_venv_bin()}{os.pathsep}{os.environ.get('PATH', '')}",
        **({SERVICE_CA_ENV: str(tls.ca)} if tls else {}),
    }


def run_folder(cfg: RunConfig, num_items: int | None = None) -> Path:
    """The run's folder: ``federation.run_dir`` when given, else a new one under ``out_dir``.

    Resuming needs a folder with a checkpoint, and a new run never writes into a folder that holds one, so that
    no earlier round is overwritten by mistake. With ``num_items`` (the data's catalogue) a resumed run's
    checkpoint must also hold the configured SRM's tensors.
    """
    fed = cfg.federation
    given = Path(fed.run_dir) if fed.run_dir else None
    if fed.resume and given is None:
        raise ConfigError(
            "federation.resume",
            "needs federation.run_dir set to the run folder to continue: ./run_federation.sh --resume "
            "runs/federation-... sets both.",
        )
    if fed.resume and not complete_checkpoints(given):
        raise ConfigError(
            "federation.resume",
            f"finds no finished round in {given} (no checkpoint in {given / 'checkpoints'}): there is nothing "
            "to continue. Start a new run (leave out --resume).",
        )
    if fed.resume:
        _check_resumable(cfg, given, num_items)
    _outside_the_app(given or Path(cfg.out_dir), "federation.run_dir" if given else "out_dir")
    if given is None:
        return new_federation_dir(cfg.out_dir, cfg.data.dataset)
    if not fed.resume and complete_checkpoints(given):
        raise ConfigError(
            "federation.run_dir",
            f"holds a run already ({given / 'checkpoints'}). Continue it with ./run_federation.sh --resume "
            f"{given}, or choose another folder.",
        )
    return output_path(given, "federation.run_dir", folder=True)


def _outside_the_app(folder: Path, key: str) -> None:
    """Refuse a run folder that ``flwr run`` would ship with the app.

    It packs the checkout into the app (every .py, .md, .toml, .json, .jsonl and .yaml, among others, that
    .gitignore does not leave out), so a run folder there goes into every later run's app, which grows until
    Flower refuses it.
    """
    inside = folder.resolve()
    if inside.is_relative_to(REPO_ROOT) and "runs" not in inside.relative_to(REPO_ROOT).parts:
        raise ConfigError(
            key,
            f"must be outside this checkout or below a folder named runs/ in it (which .gitignore leaves out "
            f"of the app flwr run ships), got {str(folder)!r}.",
        )


def resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The settings of the run in ``run_dir`` (its ``config.json``), then ``overrides``, set to resume it.

    A resumed run must train the same model on the same data, so it starts from the settings it was started
    with rather than from the defaults; overrides such as more rounds still apply (and are checked when the
    run folder is chosen).
    """
    saved = Path(run_dir) / "config.json"
    if not saved.is_file():
        raise ConfigError(
            "--resume",
            f"must be a run folder written by run_federation.sh (it holds config.json), got {run_dir}. "
            "Pass the folder the run printed, for example runs/federation-ml-latest-small-...",
        )
    return RunConfig.load(saved).override(
        [*overrides, "federation.resume=true", f"federation.run_dir={run_dir}"]
    )


# the federation settings a resumed run keeps: the fleet, and the shapes of the sums its checkpoint holds
SHAPING = ("federation.num_nodes", "federation.measure", "federation.bins", "federation.alpha_steps")
# what the run's report says the cloud saw: a gated run resumed from rounds that sent every user's view would lie
PROMISED = ("federation.fresh_lists",)


def _check_same_settings(cfg: RunConfig, run_dir: Path) -> None:
    """A resumed run keeps the data, SRM, LLM, seed and fleet its ``config.json`` says it was trained with.

    So too the request signals, histogram bins and α steps: the request budget's window in the checkpoint holds
    sums of those shapes (another signal was a KeyError at start-up, other bins a crash a round later); and who
    asked the cloud for fresh lists, which the report states for the whole run.
    Checked before anything else (the data's preparation, the memory check, the checkpoint's shapes), so that
    a changed setting is named as such, not as the symptom it would cause further on.
    """
    saved_file = run_dir / "config.json"  # the ServerApp writes it before the first round
    if not saved_file.is_file():
        return
    saved, now = RunConfig.load(saved_file).to_flat(), cfg.to_flat()
    fixed = ("srm.", "data.", "llm.")
    keys = [
        k for k in now if k in ("seed", *SHAPING, *PROMISED) or (k.startswith(fixed) and k != "data.data_dir")
    ]
    differing = [k for k in keys if saved.get(k) != now[k]]
    if differing:
        key = differing[0]  # named as set (--seed, or config seed), so that the user sees what to drop
        raise ConfigError(
            key,
            f"must stay {saved.get(key)!r} to resume {run_dir}, which was trained with it; this run sets "
            f"{now[key]!r}. Drop that change, or start a new run without resume.",
        )


def _check_resumable(cfg: RunConfig, run_dir: Path, num_items: int | None = None) -> None:
    """A resumed run must train the SRM its checkpoints hold, on the same data, fleet and LLM.

    Another LLM would serve other lists than the rounds before calibrated τ and α on, another fleet size other
    partitions than the restored node sampler describes; and config.json, which the ServerApp writes again,
    would no longer say what the earlier rounds ran with.

    What the ServerApp reads when it resumes is read here first (the newest checkpoint whole, the rounds' lines),
    so that a damaged file ends in one line naming it before anything starts, not minutes into the run.
    """
    _check_same_settings(cfg, run_dir)
    newest = latest_checkpoint(run_dir)
    if newest is not None and cfg.federation.rounds < newest.round:
        raise ConfigError(
            "federation.rounds",
            f"is {cfg.federation.rounds}, below round {newest.round} that {run_dir} has checkpointed. Pass "
            f"--rounds {newest.round} or more (as many finishes with the final evaluation alone).",
        )
    if newest is not None and num_items is not None:
        _check_checkpoint_shapes(cfg, newest.arrays.to_torch_state_dict(), num_items, run_dir)
    read_rounds(run_dir)
    if cfg.federation.private:  # as the ServerApp, which reads it in private runs only
        read_ledger(run_dir)


def _check_checkpoint_shapes(
    cfg: RunConfig, state: dict[str, torch.Tensor], num_items: int, run_dir: Path
) -> None:
    """Refuse a checkpoint whose tensors are not those of the SRM ``cfg`` builds on ``num_items`` items.

    The settings check above compares the resumed settings with the run's ``config.json``; this catches a
    ``config.json`` that no longer describes its checkpoints (edited, or copied from another run), which would
    otherwise fail in every node, minutes in.
    """
    expected = {key: tuple(t.shape) for key, t in build_srm(cfg.srm, num_items).state_dict().items()}
    found = {key: tuple(t.shape) for key, t in state.items()}
    if found != expected:
        key = next(k for k in sorted({*expected, *found}) if expected.get(k) != found.get(k))
        raise ConfigError(
            "federation.resume",
            f"{run_dir}'s newest checkpoint does not hold the SRM its settings build ({key}: "
            f"{found.get(key)} in the checkpoint, {expected.get(key)} configured). Restore the run's "
            "config.json, or start a new run.",
        )


def run_federation(cfg: RunConfig, launch: Launch = Launch()) -> Path:
    """Run the whole pipeline of the module docstring on ``launch``'s engine and runtime; return ``summary.md``.

    ``Launch(runtime="deployment")`` runs the nodes as ``flower-supernode`` processes connected to a deployment
    SuperLink, the commands edge boxes run (README), here all on 127.0.0.1; and since edge boxes talk over
    networks nobody trusts, every link of that runtime (SuperLink, supernodes, ``flwr run``, the candidate
    service) runs over TLS, with a CA made for the run (``tls/`` in the run folder).

    Everything that can be checked without training is checked first (the data, the lag it must hold, vLLM's
    venv, the run folder), so that bad settings end in one line before minutes of LLM training, and leave no
    empty folder; a training that fails or is interrupted removes the new run's folder while it is still empty.
    """
    resumed = Path(cfg.federation.run_dir) if cfg.federation.resume and cfg.federation.run_dir else None
    if resumed is not None and complete_checkpoints(resumed):  # a changed setting, named before its symptoms
        _check_same_settings(cfg, resumed)
    dataset = load_or_prepare(cfg.data, cfg.seed)
    split = TemporalSplit(dataset, cfg.data.lag)
    split.check_trainable("SRM")
    split.check_trainable("LLM")
    nodes = fleet_size(cfg.federation.num_nodes, dataset.num_users)
    if launch.runtime == "deployment" and nodes > MAX_LOCAL_SUPERNODES:
        raise ConfigError(
            "federation.num_nodes",
            f"with --runtime deployment each node is a flower-supernode process on this machine: at most "
            f"{MAX_LOCAL_SUPERNODES}, got {nodes} (0 means one per user). Pass --nodes N, or use the simulation.",
        )
    if (note := sampling_note(cfg, nodes)) is not None:
        print(f"==> note: {note}", flush=True)
    srm_bytes, available = _srm_bytes(cfg, dataset.num_items), available_memory()
    check_srm_trains(cfg, srm_bytes, available)  # every node trains one, in either runtime
    if launch.runtime == "simulation":
        check_node_state_fits(cfg, nodes, srm_bytes, available)
    if launch.engine == "vllm":
        from llm_cloud.vllm_server import vllm_unavailable_reason

        if (reason := vllm_unavailable_reason()) is not None:
            raise LSC4RecError(f"--engine vllm: {reason}; or run on --engine transformers.")
    # absolute: two runs started in one second from two folders get the same relative name, and the
    # processes each stops at its end are found by their FLWR_HOME below it
    run_dir = run_folder(cfg, dataset.num_items).resolve()
    started = time.time()
    try:
        with _held(run_dir):
            checkpoint = llm_checkpoint(cfg)
            tls = make_loopback_tls(run_dir / "tls") if launch.runtime == "deployment" else None
            with candidate_service(
                cfg, checkpoint, launch.engine, run_dir, launch.vllm_eager, tls
            ) as service:
                launch.save(run_dir)  # what the federation runs on, once it can start
                _federate(cfg, service.url, launch.runtime, nodes, run_dir, tls)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM (``run_main`` makes it a SystemExit)
        raise LSC4RecError(
            f"interrupted; every process it started is stopped.{resume_hint(run_dir)}"
        ) from None
    finally:  # a new run stopped before it wrote anything (say, in the LLM's training) leaves no folder
        with suppress(OSError):  # rmdir removes only an empty folder: never a resumed or finished run's
            run_dir.rmdir()
    summary = run_dir / SUMMARY_FILE
    # a resumed run's folder holds the report of the run it continues: only one written since counts
    if not summary.exists() or summary.stat().st_mtime < started:
        raise LSC4RecError(
            f"the federation ended without a report in {run_dir}; see {run_dir / 'superlink.log'}."
            + resume_hint(run_dir)
        )
    return summary


@contextmanager
def _held(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this launch (a lock on the folder itself, which the system frees if we die).

    A second launch of one folder (a retry in another terminal, a resume while the first still runs) would
    share its checkpoints, metrics.jsonl and Flower's state, and the first to end would stop the other's
    processes.
    """
    folder = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "federation.run_dir",
                f"{run_dir} is in use by another launch that is still running: wait for it to end (or stop it), "
                "or choose another folder.",
            ) from None
        yield
    finally:
        os.close(folder)


def sampling_note(cfg: RunConfig, nodes: int) -> str | None:
    """What a round samples when a fraction of ``nodes`` is under one node, else None.

    Flower samples ``int(fraction x nodes)`` nodes, and never fewer than the strategy's minimum of one, so a
    small fleet trains a larger share than ``--fraction`` says; a user comparing runs should know.
    """
    fed = cfg.federation
    short = [
        f"federation.{name} {fraction:g} of {nodes} nodes is {fraction * nodes:.2g} of a node"
        for name, fraction in (
            ("fraction_train", fed.fraction_train),
            ("fraction_evaluate", fed.fraction_evaluate),
        )
        if 0 < fraction * nodes < 1
    ]
    if not short:
        return None
    return f"{'; '.join(short)}: Flower samples 1 node (its minimum) for it each round."


TRAINING_COPIES = 4  # a model in training: its weights, their gradients and Adam's two moments


def check_srm_trains(cfg: RunConfig, srm_bytes: int, available: int | None) -> None:
    """Refuse an SRM (``srm_bytes`` of weights) whose training cannot fit in ``available`` bytes (None: unknown).

    Sized before the model is built (``_srm_bytes``), so that the machine's allocator never meets it.
    """
    if available is not None and TRAINING_COPIES * srm_bytes > available:
        raise ConfigError(
            "srm.hidden",
            f"one SRM on this catalogue holds {srm_bytes / 2**30:.1f} GiB, and training it needs about "
            f"{TRAINING_COPIES} times that (weights, gradients, Adam's two moments), more than the "
            f"{available / 2**30:.1f} GiB available, got {cfg.srm.hidden}. Lower it, or shrink the catalogue "
            "with a higher data.kcore.",
        )


def check_node_state_fits(cfg: RunConfig, nodes: int, srm_bytes: int, available: int | None) -> None:
    """Refuse a simulation whose nodes' kept models (``srm_bytes`` each) cannot fit in ``available`` bytes.

    Flower's simulation keeps every node's ``context.state`` in one process: a personal copy of the SRM per node
    (``federation.keep_personal``) and, with ``federation.keep_optimizer``, its Adam state (twice the SRM). On a
    large catalogue with one user per node (``--dataset beauty`` alone: 22,363 copies of 3.3 MB) that is more
    than a laptop holds, and the run would be killed in its final questions to every node, hours in.
    ``available`` None (memory unknown) skips the check.
    """
    fed = cfg.federation
    copies = int(fed.keep_personal) + 2 * int(fed.keep_optimizer)
    if available is None or not copies:
        return
    need = nodes * copies * srm_bytes
    if need > available:
        kept = [
            (what, setting)
            for what, setting, on in (
                ("a personal SRM copy", "keep_personal=false (the report is the same)", fed.keep_personal),
                ("the Adam state", "keep_optimizer=false", fed.keep_optimizer),
            )
            if on
        ]
        raise ConfigError(
            "federation.num_nodes",
            f"the simulation would keep {' and '.join(what for what, _ in kept)} for each of {nodes:,} nodes "
            f"({copies} x {srm_bytes / 2**20:.1f} MiB each), about {need / 2**30:.1f} GiB, and this machine has "
            f"{available / 2**30:.1f} GiB available. Use fewer nodes (edge boxes: --nodes 10; configs/ has the "
            f"benchmarks' settings), or "
            + " and ".join(f"--set federation.{setting}" for _, setting in kept)
            + ".",
        )


def _srm_bytes(cfg: RunConfig, num_items: int) -> int:
    """The size of the SRM's weights on this catalogue: what one personal copy holds.

    Built on the meta device, which allocates nothing: a model too large for the machine is then refused by the
    memory check instead of failing, or swapping for minutes, in the allocator.
    """
    with torch.device("meta"):
        model = build_srm(cfg.srm, num_items)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def available_memory() -> int | None:
    """Bytes of memory available to new work: Linux's MemAvailable, else the physical total, else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def resume_hint(run_dir: Path) -> str:
    """The command that continues a run which ended early, when it checkpointed a round ("" when none)."""
    done = complete_checkpoints(run_dir)
    if not done:
        return ""
    return f" Round {max(done)} is checkpointed: ./run_federation.sh --resume {run_dir} continues from there."


# Lines of `flwr run` that mislead here: Flower's advice on sizing a federation the launcher has sized, and Ray's
# tip on a GPU setting a CPU run never reads. Everything else is shown as it comes.
NOISE = re.compile(
    r"default simulated SuperNodes changed|To change federation size|flwr federation simulation-config"
    r"|FutureWarning: Tip: In future versions of Ray"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes: kept on a terminal, dropped in a log file


def _run_shown(command: list[str], env: dict[str, str]) -> int:
    """Run ``command``, passing its output on line by line less the ``NOISE``; return its exit code."""
    terminal = sys.stdout.isatty()
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        try:
            skip_warn_line = False
            for line in process.stdout or ():
                if NOISE.search(line) or (skip_warn_line and line.strip() == "warnings.warn("):
                    skip_warn_line = "FutureWarning" in line  # Python prints the warning's source line next
                    continue
                skip_warn_line = False
                print(line if terminal else ANSI.sub("", line), end="", flush=True)
        except BaseException:  # as subprocess.run does: an interrupted launcher leaves no flwr run behind
            process.kill()
            raise
    return process.returncode


def _rounds_ahead(cfg: RunConfig, run_dir: Path) -> str:
    """The rounds this launch runs, in words: a resumed run's are not Flower's ``[ROUND 1/N]`` numbers."""
    total = cfg.federation.rounds
    done = max(complete_checkpoints(run_dir), default=0) if cfg.federation.resume else 0
    if done == 0:
        return f"{total} round{'s' if total != 1 else ''}"
    if done >= total:
        return f"{'the round' if total == 1 else f'all {total} rounds'} done: the final evaluation alone"
    span = f"round {total}" if done + 1 == total else f"rounds {done + 1} to {total}"
    return f"{span} of {total}, resumed after round {done}; Flower's [ROUND n/m] lines count from 1"


def _federate(
    cfg: RunConfig, service_url: str, runtime: str, nodes: int, run_dir: Path, tls: TLSFiles | None
) -> None:
    """Start Flower's processes, ``flwr run`` the app against the service, and stop them on the way out."""
    with (
        superlink(run_dir, runtime, tls) as (address, env),
        supernodes(address, nodes, run_dir, tls, env) if runtime == "deployment" else nullcontext(),
    ):
        cfg = cfg.override(
            [f"federation.service_url={service_url}", f"federation.run_dir={run_dir.resolve()}"]
        )
        run_config = run_dir / "run_config.toml"
        run_config.write_text(_toml(cfg.to_flat()))
        print(
            f"==> federation (Flower {runtime}{', every link over TLS with the CA ' + str(tls.ca) if tls else ''}): "
            f"{nodes} supernodes, {_rounds_ahead(cfg, run_dir)}",
            flush=True,
        )
        command = [_venv_bin("flwr"), "run", str(REPO_ROOT), FEDERATION, "--stream"]
        command += ["--run-config", str(run_config)]
        if runtime == "simulation":
            command += ["--federation-config", f"num-supernodes={nodes} client-resources-num-cpus=1"]
        returncode = _run_shown(command, {**os.environ, **env, "PYTHONUNBUFFERED": "1"})
        if returncode != 0:
            raise LSC4RecError(
                f"flwr run exited with code {returncode}; see the log above and "
                f"{run_dir / 'superlink.log'}.{resume_hint(run_dir)}"
            )


def _toml(flat: dict[str, object]) -> str:
    """Flat dotted keys as TOML (Flower flattens nested tables back into the same keys).

    JSON's strings are TOML's basic strings but for the surrogate pairs JSON escapes characters beyond the BMP
    into, which TOML refuses: those (an emoji in a folder's name) are written as they are.
    """
    return "".join(f'"{key}" = {json.dumps(value, ensure_ascii=False)}\n' for key, value in flat.items())
