"""benchmarks/llm_quality.py: its table names the protocol and the list length it was run with."""

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
