import json

from typer.testing import CliRunner

from llm_cloud.cli import app
from tests.conftest import TINY_SETTINGS


def test_cli_train_then_evaluate_writes_checkpoint_and_metrics(tiny_dataset, tmp_path) -> None:
    data = tiny_dataset.save(tmp_path / "tiny.npz")
    overrides = [arg for setting in [*TINY_SETTINGS, "llm.epochs=1"] for arg in ("--set", setting)]
    runner = CliRunner()
    trained = runner.invoke(
        app, ["train", "--data", str(data), "--out", str(tmp_path / "ckpt"), "--quiet", *overrides]
    )
    assert trained.exit_code == 0, trained.output
    config = json.loads((tmp_path / "ckpt" / "lsc4rec_config.json").read_text())
    assert config["llm"]["hidden"] == 64 and config["data"]["lag"] == 2
    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--data",
            str(data),
            "--k",
            "10",
            "--json",
            str(tmp_path / "m.json"),
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "m.json").read_text())
    assert set(report["metrics"]) == {"stale", "fresh"}
    assert {"ndcg@10", "hr@5", "mrr@20", "recall@10"} <= set(report["metrics"]["fresh"])
    assert report["k"] == 10
    by_default = runner.invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--data",
            str(data),
            "--json",
            str(tmp_path / "d.json"),
        ],
    )
    assert by_default.exit_code == 0, by_default.output
    assert json.loads((tmp_path / "d.json").read_text())["k"] == config["llm"]["k"]
