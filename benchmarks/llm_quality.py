"""LLM-only quality on the paper protocol, beside the two reference floors.

For each dataset (5-core, random numbering, lag 2, K = 50): train the scratch item-token LLM on the cloud view
(or reuse a checkpoint already in the output folder), then report NDCG@10, HR@10 and recall@50 for the stale
query (cloud view at test) and the fresh query (device view at test). The LLM is ranked over its K-list; the
floors (MostPopular, ItemTransition fitted on the SRM training sequences) over the full catalogue with history
items excluded. For NDCG/HR@10 the two coincide (the list is the top-K of the same exclusion-masked ranking).

    PYTHONPATH=. .venv/bin/python benchmarks/llm_quality.py --json runs/bench/llm_quality.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from llm_cloud.engines import make_engine
from llm_cloud.evaluate import evaluate_engine
from llm_cloud.train import train_llm
from lsc4rec.config import load_config
from lsc4rec.data import TemporalSplit
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.floors import reference_floors

COLUMNS = ("ndcg@10", "hr@10", "recall@50")


def floor_rows(split: TemporalSplit, max_len: int, k: int) -> dict[str, dict[str, dict[str, float]]]:
    """Both floors from both queries, with recall@K (= HR@K over the full catalogue) beside NDCG/HR@10."""
    floors = reference_floors(split, max_len, cutoffs=(10, k))
    return {
        name: {
            query: {"ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"], f"recall@{k}": m[f"hr@{k}"]}
            for query, m in by_query.items()
        }
        for name, by_query in floors.items()
    }


def run_dataset(name: str, out_dir: Path, overrides: list[str], k: int) -> dict:
    config = load_config(
        None, [f"data.dataset={name}", "data.kcore=5", "data.numbering=random", "data.lag=2", *overrides]
    )
    dataset = load_or_prepare(config.data, config.seed)
    checkpoint = out_dir / f"{name}-scratch"
    if not (checkpoint / "train_result.json").exists():
        train_llm(config, dataset, checkpoint)
    trained = json.loads((checkpoint / "train_result.json").read_text())
    llm = evaluate_engine(make_engine("transformers", checkpoint), dataset, config.data.lag, k)
    rows = {"LLM (scratch, over its list)": {q: {c: llm[q][c] for c in COLUMNS} for q in llm}}
    rows.update(floor_rows(TemporalSplit(dataset, config.data.lag), config.srm.max_len, k))
    return {
        "dataset": name,
        "kcore": 5,
        "numbering": "random",
        "lag": config.data.lag,
        "k": k,
        "users": dataset.num_users,
        "items": dataset.num_items,
        "checkpoint": str(checkpoint),
        "llm_best_epoch": trained["best_epoch"],
        "llm_train_seconds": trained["seconds"],
        "llm_valid_ndcg@10": trained["best_valid_ndcg10"],
        "rows": rows,
    }


def print_table(results: list[dict]) -> None:
    header = f"{'dataset':16} {'model':30} " + " ".join(
        f"{q}_{c:>9}" for q in ("stale", "fresh") for c in COLUMNS
    )
    print(header)
    for result in results:
        for model, queries in result["rows"].items():
            cells = " ".join(f"{queries[q][c]:>15.4f}" for q in ("stale", "fresh") for c in COLUMNS)
            print(f"{result['dataset']:16} {model:30} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="ml-latest-small,beauty")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench-llm-quality"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="training key=value")
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = [run_dataset(name, args.out_dir, args.overrides, args.k) for name in args.datasets.split(",")]
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
