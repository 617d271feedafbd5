"""One real Flower simulation end to end: SuperLink, `flwr run`, Ray supernodes, the real service."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import httpx
import pytest

from lsc4rec.config import RunConfig
from server.launch import run_federation
from server.report import ROUNDS_FILE


@pytest.mark.slow
def test_flwr_run_simulation_writes_report_and_stops_its_processes(
    federation_config: RunConfig, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cfg = federation_config.override(
        [
            "federation.num_nodes=3",
            "federation.rounds=2",
            "llm.epochs=2",
            "federation.fraction_train=1.0",
            "federation.keep_optimizer=true",  # node state carries an ArrayRecord between rounds in Flower
            f"federation.run_dir={tmp_path / 'run'}",
        ]
    )
    summary = run_federation(cfg)
    assert summary == tmp_path / "run" / "summary.md"
    assert "| fused | stale |" in summary.read_text()
    # the ServerApp's log (streamed by `flwr run`): every supernode answered the partition query
    assert "fleet: 3 of 3 nodes told their partition id" in capfd.readouterr().out
    history = [json.loads(line) for line in (tmp_path / "run" / ROUNDS_FILE).read_text().splitlines()]
    assert [r["round"] for r in history] == [1, 2]
    assert json.loads((tmp_path / "run" / "final.json").read_text())["users"] == 24
    # every process the launcher started is gone: neither the SuperLink nor the candidate service answers
    config = (tmp_path / "run" / "flwr-home" / "config.toml").read_text()
    address = config.split('address = "')[1].split('"')[0]
    run_config = tomllib.loads((tmp_path / "run" / "run_config.toml").read_text())
    for health in (f"http://{address}/health", f"{run_config['federation.service_url']}/healthz"):
        with pytest.raises(httpx.HTTPError):
            httpx.get(health, timeout=2.0)
