"""lsc4rec/tables.py: a benchmark's table prints the protocol its JSON holds."""

import json
import re
from pathlib import Path

import pytest
from rich.markdown import Markdown

from lsc4rec.tables import print_table, report


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
    report("Rates", [{"model": "m", "rates": [0.05, 0.125]}], ["model", "rates"], None)
    assert "0.0500 0.1250" in capsys.readouterr().out  # a list prints as its values
    written = json.loads((tmp_path / "t.json").read_text())
    assert written["protocol"] == {"lag": 2, "K": 50} and written["rows"][0]["ndcg@10"] == 0.03125


def test_grouped_rows_print_one_table_each_with_the_columns_they_fill(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = [
        {"row": "fused", "ndcg@10": 0.5, "ratio": None},
        {"row": "federated SRM", "ratio": 0.25},
        {"row": "fused again", "ndcg@10": 0.75},
    ]
    report(
        "A title", rows, ["row", "ndcg@10", "ratio"], str(tmp_path / "t.json"), group=lambda r: r["row"][:3]
    )
    printed = capsys.readouterr().out
    assert printed.count("A title") == 1 and printed.index("fus") < printed.index("fed")
    fused, federated = re.split(r"^\s*fed\s*$", printed, flags=re.M)  # the second table's title line
    assert "ndcg@10" in fused and "ratio" not in fused and "fused again" in fused
    assert "ratio" in federated and "ndcg@10" not in federated and "0.2500" in federated
    assert json.loads((tmp_path / "t.json").read_text())["rows"] == rows  # whole rows, in their order


def test_a_logged_table_keeps_its_text_and_loses_the_padding(capsys: pytest.CaptureFixture) -> None:
    """Piped (as run_federation.sh into a log), rich pads every line to 200 columns: the padding goes."""
    print_table(Markdown("Protocol: dataset x\n\n| ranking | ndcg@10 |\n|---|---|\n| fused | 0.0340 |"))
    printed = capsys.readouterr().out
    assert "Protocol: dataset x" in printed and "fused" in printed and "0.0340" in printed
    assert printed.splitlines() and not any(line.endswith(" ") for line in printed.splitlines())
