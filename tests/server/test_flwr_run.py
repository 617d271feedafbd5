"""Real Flower runs end to end: SuperLink, `flwr run`, supernodes (Ray's, or flower-supernode processes), the
real service; and afterwards, none of the processes the launcher started is left."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import httpx
import pytest

from llm_cloud.processes import processes_with_env
from lsc4rec.config import RunConfig
from lsc4rec.credentials import client_context
from lsc4rec.protocol import API_KEY_ENV
from server.launch import LAUNCH_FILE, Launch, run_federation
from server.report import ROUNDS_FILE


@pytest.mark.slow
@pytest.mark.parametrize(
    ("runtime", "nodes", "rounds"),
    # a deployment node starts a process per message (about 7 s here), so that run is kept smaller
    [("simulation", 3, 2), ("deployment", 2, 1)],
)
def test_flwr_run_writes_report_and_stops_its_processes(
    federation_config: RunConfig,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    runtime: str,
    nodes: int,
    rounds: int,
) -> None:
    run_dir = tmp_path / "run"
    # the service then refuses (401) requests without the key, which fails the node's message: every user in
    # the report, and no fallback, shows that each node process Flower started was given the key
    monkeypatch.setenv(API_KEY_ENV, "a-key-the-nodes-must-carry")
    cfg = federation_config.override(
        [
            f"federation.num_nodes={nodes}",
            f"federation.rounds={rounds}",
            "llm.epochs=2",
            "federation.fraction_train=1.0",
            "federation.keep_optimizer=true",  # node state carries an ArrayRecord between rounds in Flower
            f"federation.run_dir={run_dir}",
        ]
    )
    summary = run_federation(cfg, Launch(runtime=runtime))
    assert summary == run_dir / "summary.md"
    # what --resume continues it with, beside its settings
    assert json.loads((run_dir / LAUNCH_FILE).read_text()) == {
        "engine": "transformers",
        "runtime": runtime,
        "vllm_eager": False,
    }
    assert "| fused | stale |" in summary.read_text()
    # the ServerApp's log (streamed by `flwr run`): every supernode answered the partition query
    assert f"fleet: {nodes} of {nodes} nodes told their partition id" in capfd.readouterr().out
    history = [json.loads(line) for line in (run_dir / ROUNDS_FILE).read_text().splitlines()]
    assert [r["round"] for r in history] == list(range(1, rounds + 1))
    assert all(r["train-cloud-fallbacks"] == r["cloud-fallbacks"] == 0 for r in history)
    final = json.loads((run_dir / "final.json").read_text())
    assert final["users"] == 24 and final["cloud fallbacks (final evaluation)"] == 0
    config = (run_dir / "flwr-home" / "config.toml").read_text()
    run_config = tomllib.loads((run_dir / "run_config.toml").read_text())
    service_url = run_config["federation.service_url"]
    ca = run_dir / "tls" / "ca.crt"
    if runtime == "deployment":  # each node was a supernode of its own, with its own log
        logs = sorted(p.name for p in run_dir.glob("supernode-*.log"))
        assert logs == [f"supernode-{i}.log" for i in range(nodes)]
        # and every link ran over TLS with the run's CA: the SuperLink, `flwr run`, the nodes' service;
        # the SuperLink admitted only registered keys, one per box
        superlink_log = (run_dir / "superlink.log").read_text()
        assert "Uvicorn running on https://127.0.0.1:" in superlink_log
        assert superlink_log.count('"POST /v1/control/register-node HTTP/1.1" 200') == nodes
        assert sorted(p.name for p in (run_dir / "tls").glob("supernode-*.pub")) == [
            f"supernode-{i}.pub" for i in range(nodes)
        ]
        assert f'root-certificates = "{ca}"' in config and service_url.startswith("https://")
    else:
        assert "insecure = true" in config and service_url.startswith("http://") and not ca.exists()
    # every process the launcher started is gone: neither the SuperLink nor the candidate service answers
    scheme = "https" if runtime == "deployment" else "http"
    address = config.split('address = "')[1].split('"')[0]
    verify = client_context(str(ca) if ca.exists() else None)  # so only a closed port can fail the request
    for health in (f"{scheme}://{address}/health", f"{service_url}/healthz"):
        with pytest.raises(httpx.ConnectError, match="Connection refused"):
            httpx.get(health, timeout=2.0, verify=verify)
    # nor any process carrying the run's FLWR_HOME (Flower starts some in sessions of their own)
    assert processes_with_env("FLWR_HOME", str(run_dir / "flwr-home")) == []
