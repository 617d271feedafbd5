import inspect
import json
import pathlib
import sys
from urllib.parse import urlparse

from typer.testing import CliRunner

from llm_cloud.cli import app, serve
from llm_cloud.processes import free_port
from llm_cloud.train import TRAIN_RESULT_FILE
from llm_cloud.vllm_server import VENV_MARKER
from lsc4rec.config import FederationConfig
from lsc4rec.errors import ConfigError, LSC4RecError
from tests.conftest import TINY_SETTINGS, run_module


def test_cli_train_then_evaluate_writes_checkpoint_and_metrics(tiny_dataset, tmp_path) -> None:
    data = tiny_dataset.save(tmp_path / "tiny.npz")
    overrides = [arg for setting in [*TINY_SETTINGS, "llm.epochs=1"] for arg in ("--set", setting)]
    runner = CliRunner()
    trained = runner.invoke(
        app, ["train", "--data", str(data), "--out", str(tmp_path / "ckpt"), "--quiet", *overrides]
    )
    assert trained.exit_code == 0, trained.output
    assert "Writing model shards" not in trained.output  # --quiet silences transformers' bars too
    config = json.loads((tmp_path / "ckpt" / "lsc4rec_config.json").read_text())
    assert config["llm"]["hidden"] == 64 and config["data"]["lag"] == 2
    # the data settings recorded are the prepared file's, not the defaults of a dataset it was not
    assert (config["data"]["dataset"], config["data"]["kcore"], config["data"]["numbering"]) == (
        "synthetic",
        1,
        "sequential",
    )

    def evaluate(json_out: str, *extra: str) -> dict:
        """``llm evaluate`` on the tiny checkpoint with ``extra`` options; its JSON report."""
        done = runner.invoke(
            app,
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--data",
                str(data),
                "--json",
                json_out,
                *extra,
            ],
        )
        assert done.exit_code == 0, done.output
        return json.loads(pathlib.Path(json_out).read_text())

    report = evaluate(str(tmp_path / "m.json"), "--k", "10")
    assert set(report["metrics"]) == {"stale", "fresh"}
    assert {"ndcg@10", "hr@5", "mrr@20", "recall@10"} <= set(report["metrics"]["fresh"])
    assert report["k"] == 10
    assert evaluate(str(tmp_path / "d.json"))["k"] == config["llm"]["k"]  # --k defaults to the checkpoint's


def test_cli_train_refuses_an_out_it_would_replace_or_could_not_move_into_before_training(
    tiny_dataset, tiny_checkpoint, tmp_path, monkeypatch
) -> None:
    """The checkpoint is written beside OUT and moved in: a folder that holds files (a checkpoint or anything
    else) is never replaced, and a name too long for ``.NAME.partial`` is refused, all before any training."""

    def trains(*args, **kwargs):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr("llm_cloud.train.train_llm", trains)
    data = str(tiny_dataset.save(tmp_path / "tiny.npz"))
    trained = (tiny_checkpoint / TRAIN_RESULT_FILE).read_text()
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "paper.txt").write_text("draft")
    runner = CliRunner()
    for out, message in (
        (tiny_checkpoint, "must be a new or empty folder"),
        (mine, "must be a new or empty folder"),
        (tmp_path / ("c" * 250), "needs a shorter name"),
    ):
        done = runner.invoke(app, ["train", "--data", data, "--out", str(out), "--quiet"])
        assert isinstance(done.exception, ConfigError) and message in str(done.exception), done.output
    assert (tiny_checkpoint / TRAIN_RESULT_FILE).read_text() == trained
    assert [f.name for f in mine.iterdir()] == ["paper.txt"]
    assert not (tmp_path / ("c" * 250)).exists()


def test_the_module_entry_point_the_launcher_starts_reports_errors_in_one_line(tmp_path) -> None:
    """``python -m llm_cloud.cli serve`` (what the launcher runs, its stderr going to service.log) ends a bad
    checkpoint with the one-line message `lsc4rec llm serve` gives, not a traceback."""
    done = run_module("llm_cloud.cli", "serve", "--checkpoint", str(tmp_path / "none"), "--port", "9")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --checkpoint: must be a folder written by `lsc4rec llm train`")
    assert "Traceback" not in done.stderr


STAND_IN_VLLM = """
import http.server, os, sys, threading, time
port = int(sys.argv[sys.argv.index("--port") + 1])
seen = threading.Event()
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        seen.set()
    def log_message(self, *_):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
seen.wait(60)  # dies only once the supervisor has seen it ready, however loaded the machine
time.sleep(0.5)
print("engine core died", flush=True)
os._exit(3)
"""


def test_vllm_serve_fails_when_vllm_dies_after_it_was_ready(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    """A supervisor must not read vLLM's crash as success: only Ctrl-C ends `vllm-serve` with 0."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / VENV_MARKER).write_text("")
    (venv / "stand_in.py").write_text(STAND_IN_VLLM)
    python = venv / "bin" / "python"  # called as `python -m vllm.entrypoints... ARGS`: the module is dropped
    python.write_text(f'#!/bin/bash\nshift 2\nexec {sys.executable} {venv / "stand_in.py"} "$@"\n')
    python.chmod(0o755)
    monkeypatch.setenv("LSC4REC_VLLM_VENV", str(venv))
    log = tmp_path / "vllm.log"
    port = str(free_port())
    done = CliRunner().invoke(
        app, ["vllm-serve", "--checkpoint", str(tiny_checkpoint), "--port", port, "--log", str(log)]
    )
    assert "vLLM ready at" in done.output
    assert isinstance(done.exception, LSC4RecError) and f"vLLM exited with code 3; see {log}" in str(
        done.exception
    )
    assert "engine core died" in log.read_text()


def test_serve_listens_where_a_device_looks_by_default() -> None:
    """A plain `flwr run .` beside a plain `lsc4rec llm serve` must find it (they once said 8800 and 8080)."""
    device_looks_at = urlparse(FederationConfig().service_url)
    assert device_looks_at.hostname == "127.0.0.1"
    assert inspect.signature(serve).parameters["port"].default == device_looks_at.port
