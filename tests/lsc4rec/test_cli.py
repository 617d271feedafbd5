"""The `lsc4rec` command turns bad input into one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import datetime
import functools
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flwr.app import ArrayRecord

from llm_cloud.processes import free_port
from lsc4rec import cli
from lsc4rec.config import RunConfig
from lsc4rec.credentials import make_loopback_tls
from server.checkpoint import save_checkpoint
from tests.conftest import load_benchmark, run_benchmark, run_module, synthetic_dataset


def lsc4rec(*args: str) -> subprocess.CompletedProcess[str]:
    """``lsc4rec ARGS`` in a process of its own, as a user's shell runs it."""
    return run_module("lsc4rec.cli", *args)


@pytest.fixture
def here(
    run_in_process: Callable[..., subprocess.CompletedProcess[str]],
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``lsc4rec ARGS`` run in this process (``tests.conftest.run_in_process``), for errors found before work."""
    return functools.partial(run_in_process, cli.main, "lsc4rec")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "prepare", "--dataset", "/nonexistent/folder"], "is neither a known dataset"),
        (["data", "prepare", "--set", "srm.wings=2"], "srm.wings: is not a known key"),
        (["data", "prepare", "--kcore", "0"], "error: --kcore: must be >= 1"),
        (
            ["llm", "serve", "--checkpoint", "/nonexistent/ckpt"],
            "error: --checkpoint: must be a folder written by",
        ),
        (
            ["llm", "evaluate", "--checkpoint", "/nonexistent/ckpt", "--data", "/nonexistent/data.npz"],
            "error: --checkpoint: must be a folder written by",
        ),
        (["federate", "--resume", "/nonexistent/run"], "error: --resume: must be a run folder written by"),
        (
            ["federate", "--rounds", "3", "--set", "federation.rounds=5"],
            "error: --rounds: is given twice, by --set federation.rounds=5 and by its own option (3)",
        ),
        (
            ["federate", "--set", "federation.service_url=http://10.9.9.9:8800"],
            "federation.service_url: is the candidate service this command starts itself",
        ),
        (
            ["federate", "--set", "federation.resume=true", "--set", "federation.run_dir=runs/x"],
            "federation.resume: continues a run with the settings it was started with: pass --resume RUN_DIR",
        ),
        (
            ["federate", "--set", "federation.run_dir=runs/x", "--out", "elsewhere"],
            "federation.run_dir: names the run folder itself, so --out elsewhere",
        ),
        (["federate", "--out", "--vllm-eager"], "--out: needs a value, got the option --vllm-eager"),
        # the parser would name a folder "--x", and the command run (srm train: for minutes)
        (["srm", "train", "--out", "--x"], "error: --out: needs a value, got the option --x"),
        (["data", "prepare", "--out", "--x"], "error: --out: needs a value, got the option --x"),
        (["llm", "train", "--data", "d", "--out", "--quiet"], "error: --out: needs a value, got the option"),
        (["federate", "--set", "train.lr=0.5"], "config train.lr: sets the centralized SRM's training"),
        # the transformers engine starts no vLLM
        (["federate", "--vllm-eager"], "--vllm-eager: starts vLLM, so it needs --engine vllm."),
        (
            ["llm", "serve", "--checkpoint", "c", "--api-key", "clé"],
            "--api-key (or LSC4REC_API_KEY): must be",
        ),
        (
            ["llm", "serve", "--checkpoint", "c", "--vllm-url", "http://x:1"],
            "--vllm-url: is for --engine vllm",
        ),
        (
            ["llm", "serve", "--checkpoint", "c", "--engine", "vllm", "--vllm-url", "notaurl"],
            "--vllm-url: must look like http://HOST:PORT",
        ),
        (
            ["llm", "serve", "--checkpoint", "c", "--engine", "vllm", "--vllm-url", "http://h:notaport"],
            "--vllm-url: must look like http://HOST:PORT, got 'http://h:notaport' (Invalid port",
        ),
        (
            ["llm", "serve", "--checkpoint", "c", "--host", "a" * 64],
            "--host: must be an address of this machine",
        ),
        (  # an address, but none of this machine's (TEST-NET-1): not a busy port
            ["llm", "serve", "--checkpoint", "c", "--host", "192.0.2.1"],
            "--host: must be an address of this machine, got '192.0.2.1' (Cannot assign requested address)",
        ),
        (
            ["llm", "train", "--data", "d", "--out", "o", "--base", "scratch", "--set", "llm.base=/x"],
            "error: --base: is given twice, by --set llm.base=/x and by its own option (scratch)",
        ),
        # a --set of a section the command never reads would run as if it had not been given
        (
            ["data", "prepare", "--set", "data.lag=3"],  # the split comes later: prepare never reads it
            "config data.lag: is not read by this command, which reads only data.dataset, data.data_dir, "
            "data.kcore, data.numbering, seed:",
        ),
        (
            ["srm", "train", "--set", "federation.rounds=3"],
            "federation.rounds: is not read by this command, which reads only data.*, srm.*, train.*, seed, out_dir",
        ),
        (
            ["llm", "train", "--data", "d", "--out", "o", "--set", "srm.hidden=8"],
            "srm.hidden: is not read by this command, which reads only data.lag, llm.*, seed:",
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, here: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    done = here(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_bad_input_in_a_process_of_its_own_is_one_line_and_exit_2() -> None:
    """The table above runs in this process; a row as a user's shell runs it prints that line and nothing else."""
    done = lsc4rec("federate", "--vllm-eager")
    assert done.returncode == 2
    assert done.stderr == "error: --vllm-eager: starts vLLM, so it needs --engine vllm.\n"


def test_cli_malformed_file_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,3.0,soon\n")
    done = lsc4rec("data", "prepare", "--dataset", str(tmp_path))
    assert done.returncode == 2
    assert f"{tmp_path / 'ratings.csv'}:2: timestamp must be a finite number" in done.stderr


@pytest.mark.parametrize("how", ["--dataset", "--set"])
def test_cli_prepare_prints_statistics(tmp_path: Path, how: str) -> None:
    """The dataset comes from --dataset or, with no --dataset, from --set (the config's order of precedence)."""
    (tmp_path / "sequential_data.txt").write_text("".join(f"{u} 1 2 3 4 5\n" for u in range(1, 7)))
    chosen = [how, str(tmp_path)] if how == "--dataset" else [how, f"data.dataset={tmp_path}"]
    done = lsc4rec("data", "prepare", *chosen, "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "interactions" in done.stdout and "30" in done.stdout
    (prepared,) = (tmp_path / "out").glob("*.npz")
    assert f"prepared dataset: {prepared}\n" in done.stdout  # one line, however long: no wrap at 80 columns


def test_cli_out_of_range_options_are_usage_errors(
    here: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    """Typer checks ranges before any work; its usage message names the option."""
    for args, option in (
        (["llm", "evaluate", "--checkpoint", "c", "--data", "d", "--k", "0"], "'--k'"),
        (["llm", "evaluate", "--checkpoint", "c", "--data", "d", "--lag", "-1"], "'--lag'"),
        (["llm", "serve", "--checkpoint", "c", "--port", "70000"], "'--port'"),
    ):
        done = here(*args)
        assert done.returncode == 2 and "Invalid value for" in done.stderr and option in done.stderr
        assert "Traceback" not in done.stderr
    # the federation's own checks answer in the one line every other setting error takes
    for args, line in (
        (["federate", "--runtime", "cluster"], "error: --runtime: must be one of simulation|deployment"),
        (["federate", "--resume", "runs/x", "--config", "c.toml"], "error: --resume: keeps the run's own"),
    ):
        done = here(*args)
        assert done.returncode == 2 and done.stderr.startswith(line) and len(done.stderr.splitlines()) == 1


def test_cli_busy_port_and_unwritable_outputs_fail_first(
    tmp_path: Path, here: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Checked before a model loads or trains: a busy port, an output path below a file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    data = str(synthetic_dataset().save(tmp_path / "d.npz"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        cases = [
            (["llm", "serve", "--checkpoint", "c", "--port", port], "--port: must be free on 127.0.0.1"),
            (["llm", "train", "--data", data, "--out", str(blocker / "ckpt")], "--out: must be a path whose"),
            (
                ["llm", "serve", "--checkpoint", "c", "--host", "no-such-host.invalid"],
                "--host: must be an address",
            ),
            (
                ["llm", "evaluate", "--checkpoint", "c", "--data", "d", "--json", str(blocker / "m.json")],
                "--json: must be a path whose",
            ),
            (["llm", "evaluate", "--checkpoint", "c", "--data", "d", "--json", str(tmp_path)], "is a folder"),
        ]
        for args, message in cases:
            done = here(*args)
            assert done.returncode == 2 and message in done.stderr, done.stderr
            assert len(done.stderr.strip().splitlines()) == 1


def test_cli_resume_takes_no_other_run_folder(
    tmp_path: Path, here: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """--resume names the folder: a run_dir, out_dir or --out beside it would be dropped without a word."""
    for extra in (["--set", "federation.run_dir=elsewhere"], ["--out", "elsewhere"]):
        done = here("federate", "--resume", str(tmp_path), *extra)
        assert done.returncode == 2 and "--resume: names the run folder and continues it" in done.stderr


@pytest.mark.parametrize(
    ("base", "message"),
    [("/nonexistent/model", "--base: must be scratch or an existing model folder"), ("", "--base: must be")],
)
def test_cli_llm_train_with_a_bad_base_leaves_no_folder(
    tmp_path: Path, base: str, message: str, here: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    data = str(synthetic_dataset().save(tmp_path / "d.npz"))
    done = here("llm", "train", "--data", data, "--out", str(tmp_path / "ckpt"), "--base", base)
    assert done.returncode == 2 and message in done.stderr, done.stderr  # "" is not taken for scratch
    assert not (tmp_path / "ckpt").exists()


def test_cli_serve_checks_its_certificate_before_the_model_loads(tmp_path: Path) -> None:
    """https needs a certificate and its own key, both readable; a checkpoint is never looked at before."""
    tls, other = make_loopback_tls(tmp_path / "tls"), make_loopback_tls(tmp_path / "other")
    for args, message in (
        (["--ssl-certfile", str(tls.cert)], "--ssl-keyfile: is needed too"),
        (["--ssl-keyfile", str(tls.key)], "--ssl-certfile: is needed too"),
        (["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(other.key)], "its private key"),
        (["--ssl-certfile", str(tmp_path / "none.pem"), "--ssl-keyfile", str(tls.key)], "its private key"),
    ):
        done = lsc4rec("llm", "serve", "--checkpoint", "c", "--port", str(free_port()), *args)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_cli_serve_refuses_an_expired_certificate_which_every_device_would(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    year = datetime.timedelta(days=365)
    now = datetime.datetime.now(datetime.UTC)
    cert = x509.CertificateBuilder(
        name, name, key.public_key(), x509.random_serial_number(), now - 2 * year, now - year
    ).sign(key, hashes.SHA256())
    (tmp_path / "old.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "old.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    args = ["--ssl-certfile", str(tmp_path / "old.pem"), "--ssl-keyfile", str(tmp_path / "old.key")]
    done = lsc4rec("llm", "serve", "--checkpoint", "c", "--port", str(free_port()), *args)
    expired = f"{(now - year):%Y-%m-%d}"
    assert done.returncode == 2 and f"old.pem expired on {expired}: devices would refuse it" in done.stderr


def test_benchmark_with_an_unwritable_json_path_stops_before_any_work(tmp_path: Path) -> None:
    """Benchmarks share the command's error edge: one line, exit 2, and the --json path is checked first."""
    (tmp_path / "a-file").write_text("")
    done = run_benchmark("srm_central", "--json", str(tmp_path / "a-file" / "x.json"), "--out", str(tmp_path))
    assert done.returncode == 2 and "error: --json: must be a path whose folder" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]  # no run folder was made


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("rerank_latency.py", ["--items", "0"], "argument --items: must be an integer >= 1, got '0'"),
        ("rerank_latency.py", ["--repeats", "-1"], "argument --repeats: must be an integer >= 1"),
        ("candidate_throughput.py", ["--checkpoint", "c", "--batches", "1,a"], "argument --batches: must be"),
        (
            "federation_quality.py",
            ["--report-only", "."],
            "error: --report-only: must be a finished federation",
        ),
        ("federation_quality.py", ["--checkpoint", "beauty"], "error: --checkpoint: must be DATASET=CKPT"),
        (  # the options a finished run's report does not read are refused, not ignored
            "federation_quality.py",
            ["--report-only", ".", "--datasets", "beauty"],
            "error: --report-only reads a finished run: drop --datasets, --checkpoint and --out",
        ),
        (  # a finished run's report can be computed again only under the settings it is computed with
            "federation_quality.py",
            ["--report-only", ".", "--set", "federation.alpha_margin_se=0", "--set", "srm.hidden=8"],
            "error: --set srm.hidden: --report-only can change only what the report is computed with "
            "(federation.alpha_margin_se), not the run",
        ),
        (  # a typo in the dataset would train that dataset's LLM instead
            "federation_quality.py",
            ["--datasets", "ml-latest-small", "--checkpoint", "ml=."],
            "error: --checkpoint ml=…: ml is not among --datasets ml-latest-small",
        ),
        (
            "federation_quality.py",
            ["--select-users", "-5"],
            "argument --select-users: must be an integer >= 0",
        ),
        (
            "request_signals.py",
            ["--run", ".", "--checkpoint", ".", "--users", "-7"],
            "argument --users: must be an integer >= 0, got '-7'",
        ),
        # a --set of what the script sets per run would win over it and leave the rows mislabelled
        (
            "srm_central.py",
            ["--set", "srm.model=gru4rec"],
            "error: --set srm.model: this script sets it for each run; pick the models with --runs",
        ),
        (
            "llm_quality.py",
            ["--set", "data.dataset=beauty"],
            "error: --set data.dataset: this script sets it",
        ),
        (
            "privacy_tradeoff.py",
            ["--set", "federation.dp_noise=1"],
            "error: --set federation.dp_noise: this script sets it for each run; use --noise",
        ),
        (  # its checks compare random and gated requests, which a gated fleet cannot measure
            "federation_quality.py",
            ["--set", "federation.fresh_lists=gated"],
            "error: --set federation.fresh_lists: this script sets it for each run; its checks compare request",
        ),
        (
            "privacy_tradeoff.py",
            ["--set", "federation.fresh_lists=gated"],
            "error: --set federation.fresh_lists: this script sets it for each run; its figures compare request",
        ),
        (
            "gate_window.py",
            [".", "--budgets", "0"],
            "argument --budgets: must be comma-separated shares in (0, 1]",
        ),
        (
            "federation_quality.py",
            ["--central", "no-such.json", "--report-only", "."],
            "error: --central: must be a JSON file written by benchmarks/srm_central.py",
        ),
        ("gate_window.py", ["."], "error: . is not a finished federation that recorded"),
        (  # a typo in the last dataset is found before the first one trains
            "srm_central.py",
            ["--datasets", "ml-latest-small", "beuaty"],
            "argument --datasets: must be ml-latest-small, beauty, toys or an existing path, got 'beuaty'",
        ),
        ("llm_quality.py", ["--datasets", "ml-latest-small,nosuch"], "argument --datasets: must be"),
        ("llm_quality.py", ["--datasets", "ml-latest-small,"], "an existing path, got ''"),  # not the cwd
        ("federation_quality.py", ["--datasets", "nosuch"], "argument --datasets: must be"),
        (
            "gate_window.py",
            [".", "--budgets", "0.05,2"],
            "argument --budgets: must be comma-separated shares",
        ),
        (
            "gate_window.py",
            [".", "--budgets", "0.05,x"],
            "argument --budgets: must be comma-separated shares",
        ),
        (
            "privacy_tradeoff.py",
            ["--noise", "1,-2"],
            "argument --noise: must be comma-separated numbers >= 0",
        ),
        ("privacy_tradeoff.py", ["--noise", "1,x"], "argument --noise: must be comma-separated numbers >= 0"),
        # a private run's settings are checked before the data is read or anything starts
        (
            "privacy_tradeoff.py",
            ["--noise", "0,1", "--set", "federation.strategy=fedadam"],
            "error: config federation.strategy: must be fedavg|fedprox with federation.dp_noise > 0",
        ),
        (
            "privacy_tradeoff.py",
            ["--noise", "0,1", "--delta", "2"],
            "error: config federation.dp_delta: must be in (0, 1)",
        ),
    ],
)
def test_benchmark_arguments_are_checked_first(
    script: str,
    args: list[str],
    message: str,
    run_in_process: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    done = run_in_process(load_benchmark(script.removesuffix(".py")).main, script, *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_setting_error_names_what_the_user_typed(
    tmp_path: Path, here: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """The option when the value came from one, the config key when it came from --set, in every command."""
    run = tmp_path / "run"  # a run to resume, trained with the default seed
    run.mkdir()
    RunConfig().save(run / "config.json")
    save_checkpoint(run, 1, ArrayRecord({"w": torch.zeros(2)}), 0.5)
    resumed = f"must stay 0 to resume {run}, which was trained with it; this run sets 1."
    for args, line in (
        (["federate", "--rounds", "0"], "error: --rounds: must be >= 1, got 0."),
        (
            ["federate", "--set", "federation.rounds=0"],
            "error: config federation.rounds: must be >= 1, got 0.",
        ),
        (["srm", "train", "--model", "foo"], "error: --model: must be sasrec|gru4rec|din, got 'foo'."),
        (["federate", "--resume", str(run), "--seed", "1"], f"error: --seed: {resumed}"),
        (["federate", "--resume", str(run), "--set", "seed=1"], f"error: config seed: {resumed}"),
        (  # not compared with the run's own, and never read: refused as in a new run
            ["federate", "--resume", str(run), "--set", "train.lr=0.5"],
            "error: config train.lr: sets the centralized SRM's training",
        ),
    ):
        done = here(*args)
        assert done.returncode == 2 and done.stderr.strip().startswith(line), done.stderr


def test_a_config_file_may_hold_sections_federate_does_not_read(tmp_path: Path) -> None:
    """One file serves every command of a run: federate takes its [train] (srm train's) and goes on to the
    checks of the settings as a whole (here a service URL, which it starts itself)."""
    (tmp_path / "run.toml").write_text("[train]\nepochs = 50\n")
    given = ("--config", str(tmp_path / "run.toml"), "--set", "federation.service_url=http://127.0.0.1:1")
    done = lsc4rec("federate", *given)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "error: config federation.service_url: is the candidate service this command"
    )
