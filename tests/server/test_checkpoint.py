"""Per-round checkpoints: only complete ones count, and any round can be loaded back."""

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord

from clients.srm import build_srm
from lsc4rec.config import RunConfig
from lsc4rec.errors import DataFormatError
from server.checkpoint import (
    PRIVACY_LEDGER,
    complete_checkpoints,
    latest_checkpoint,
    load_global_srm,
    read_ledger,
    save_checkpoint,
)


def test_rounds_load_back_and_incomplete_checkpoints_are_skipped(tmp_path: Path) -> None:
    cfg = RunConfig().override(["srm.hidden=8", "srm.layers=1", "srm.max_len=5"])
    models = []
    for server_round in (1, 2, 3):
        torch.manual_seed(server_round)
        models.append(build_srm(cfg.srm, 12))
        privacy = {"compositions": [server_round]}  # the accountant's state, as a private run saves it
        save_checkpoint(
            tmp_path,
            server_round,
            ArrayRecord(models[-1].state_dict()),
            0.5 + server_round,
            "kendall",
            privacy,
        )
    (tmp_path / "checkpoints" / "round-0003.json").unlink()  # round 3 died before its sidecar was written
    assert sorted(complete_checkpoints(tmp_path)) == [1, 2]
    newest = latest_checkpoint(tmp_path)
    assert newest is not None and (newest.round, newest.tau, newest.measure) == (2, 2.5, "kendall")
    assert newest.privacy == {"compositions": [2]}
    for server_round, expected in ((1, models[0]), (None, models[1])):
        loaded = load_global_srm(cfg, 12, tmp_path, server_round)
        assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), expected.parameters(), strict=True))
    with pytest.raises(FileNotFoundError, match="no checkpoint of round 3"):
        load_global_srm(cfg, 12, tmp_path, 3)
    with pytest.raises(FileNotFoundError, match="run the federation first"):
        load_global_srm(cfg, 12, tmp_path / "elsewhere")
    with pytest.raises(RuntimeError, match="Missing key"):  # a deeper SRM than saved: no layer left random
        load_global_srm(cfg.override(["srm.layers=2"]), 12, tmp_path)


def test_a_ledger_that_is_no_object_is_named(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / PRIVACY_LEDGER).write_text("[1]")
    with pytest.raises(DataFormatError, match=r"is not a privacy ledger \(a list, not an object\)"):
        read_ledger(tmp_path)


@pytest.mark.parametrize(
    "sidecar", ["garbage", "{}", '{"round": 1}', "[1]", '{"round": 1, "request-tau": 0.5, "privacy": 3}']
)
def test_a_damaged_sidecar_or_weights_file_names_the_file(tmp_path: Path, sidecar: str) -> None:
    cfg = RunConfig().override(["srm.hidden=8", "srm.layers=1", "srm.max_len=5"])
    path = save_checkpoint(tmp_path, 1, ArrayRecord(build_srm(cfg.srm, 12).state_dict()), 0.5)
    weights = path.read_bytes()
    path.with_suffix(".json").write_text(sidecar)
    with pytest.raises(DataFormatError, match=r"round-0001\.json: is not a round checkpoint's sidecar"):
        complete_checkpoints(tmp_path)
    save_checkpoint(tmp_path, 1, ArrayRecord(build_srm(cfg.srm, 12).state_dict()), 0.5)
    path.write_bytes(weights[:50])  # a half-copied weights file
    with pytest.raises(DataFormatError, match=r"round-0001\.safetensors: is not a readable round checkpoint"):
        latest_checkpoint(tmp_path)


def test_a_checkpoint_is_on_disk_before_its_sidecar_says_it_is_whole(
    tmp_path: Path, disk_events: list[str]
) -> None:
    """After a power cut a sidecar must not vouch for a safetensors file the disk never received."""
    save_checkpoint(tmp_path, 2, ArrayRecord({"w": torch.ones(3)}), tau=0.5)
    assert disk_events[0] == "fsync round-0002.safetensors"
    assert disk_events[1].startswith("fsync .round-0002.json.") and disk_events[2] == "replace"
