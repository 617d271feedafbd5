"""lsc4rec/tables.py: a benchmark's table prints the protocol its JSON holds."""

import json
from pathlib import Path

import pytest

from lsc4rec.tables import report


def test_the_printed_table_carries_the_protocol_of_its_json(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    extra = {
        "ranking": "over the list",
        "protocol": {"lag": 2, "K": 50},
        "runs": {"beauty": {"run_dir": "x", "protocol": {"lag": 2}}},  # nested: the JSON's alone
    }
    report(
        "A title", [{"model": "m", "ndcg@10": 0.03125}], ["model", "ndcg@10"], str(tmp_path / "t.json"), extra
    )
    printed = capsys.readouterr().out
    assert "ranking: over the list" in printed and "protocol: lag 2, K 50" in printed
    assert "0.0312" in printed and "run_dir" not in printed
    written = json.loads((tmp_path / "t.json").read_text())
    assert written["protocol"] == {"lag": 2, "K": 50} and written["rows"][0]["ndcg@10"] == 0.03125
