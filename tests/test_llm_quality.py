"""benchmarks/llm_quality.py: its table names the protocol and the list length it was run with."""

import json

import pytest

from tests.conftest import load_benchmark


def test_the_table_states_the_protocol_and_reads_recall_at_the_runs_k(capsys: pytest.CaptureFixture) -> None:
    module = load_benchmark("llm_quality")
    figures = {"ndcg@10": 0.01, "hr@10": 0.02, "recall@20": 0.05}
    result = {
        "dataset": "beauty",
        "users": 3,
        "items": 9,
        "kcore": 5,
        "numbering": "random",
        "seed": 2,
        "lag": 2,
        "k": 20,  # recall@50 would be a KeyError: the list holds 20
        "ranking": module.RANKING,
        "llm_best_epoch": 7,
        "llm_averaged_epochs": 4,
        "llm_train_seconds": 12.0,
        "llm_valid_ndcg@10": 0.03,
        "rows": {"LLM (scratch, over its list)": {"stale": figures, "fresh": figures}},
    }
    module.print_table([result])
    printed = capsys.readouterr().out
    assert (
        "seed 2, lag 2, K = 20" in printed and "over its K-list" in printed and "stale_recall@20" in printed
    )
    assert printed.splitlines()[-1].split()[-1] == "0.0500"  # fresh recall@20
    # the validation score is the average's, which the best epoch alone did not reach
    assert "LLM: the last 4 epochs averaged (best single epoch 7), 12 s, validation NDCG@10 0.0300" in printed


def test_a_checkpoint_trained_with_other_settings_is_refused_not_reported(tmp_path) -> None:
    """The script reuses the checkpoint in --out-dir; one of other --set llm.* values must not pass as new."""
    from llm_cloud.train import train_llm
    from lsc4rec.config import RunConfig
    from lsc4rec.errors import ConfigError
    from tests.conftest import TINY_SETTINGS, synthetic_dataset

    module = load_benchmark("llm_quality")
    cfg = RunConfig().override([*TINY_SETTINGS, "llm.epochs=1"])
    train_llm(cfg, synthetic_dataset(), tmp_path / "ckpt", progress=False)
    recipe = json.loads((tmp_path / "ckpt" / "train_result.json").read_text())["recipe"]
    module.check_same_settings(
        tmp_path / "ckpt", cfg.override(["llm.k=20"]), recipe
    )  # K only shapes requests
    with pytest.raises(
        ConfigError, match=r"--out-dir: holds .*ckpt, trained with other llm\.hidden, seed than"
    ):
        module.check_same_settings(tmp_path / "ckpt", cfg.override(["llm.hidden=32", "seed=3"]), recipe)
    with pytest.raises(ConfigError, match=r"other training code \(recipe 1, now \d+\) than asked for"):
        module.check_same_settings(tmp_path / "ckpt", cfg, 1)  # a result of older code holds no recipe: 1


def test_each_dataset_runs_on_its_settings_file_so_the_federations_llm_is_the_one_measured() -> None:
    """Beauty's LLM recipe lives in configs/bench-beauty.toml; without it this would train another LLM."""
    from lsc4rec.config import RunConfig

    module = load_benchmark("llm_quality")
    beauty = module.dataset_config("beauty", ["seed=1"])
    assert (beauty.llm.hidden, beauty.llm.dropout, beauty.llm.refit_epochs, beauty.seed) == (64, 0.5, 0, 1)
    assert beauty.data.lag == 2 and beauty.data.numbering == "random"
    # a dataset without a settings file keeps the code's defaults
    assert module.dataset_config("toys-nosuch", []).llm == RunConfig().llm
