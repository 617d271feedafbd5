"""LLM-only quality on the paper protocol, beside the two reference floors.

For each dataset (5-core, random numbering, lag 2, K = 50; its settings file configs/bench-DATASET.toml where there
is one, then ``--set``): take the scratch item-token LLM trained on the cloud view with those settings (the
launcher's cached one, which run_federation.sh and benchmarks/federation_quality.py serve, trained on first use;
with ``--out-dir``, for trials, the one in that folder), then report NDCG@10, HR@10 and recall@K for
the stale query (cloud view at test) and the fresh query (device view at test). The LLM is ranked over its
K-list; the floors (MostPopular, ItemTransition fitted on the SRM training sequences) over the full catalogue with
history items excluded. For NDCG/HR@10 the two coincide (the list is the top-K of the same exclusion-masked ranking).
Every row is on the test target x_n except the LLM's second row, the same queries one step earlier (target
x_{n-1}, never a training target of the LLM): compare LLM settings there, not on test.

The floors are fitted on the SRM training sequences (x_1 … x_{n-2}), data the cloud never sees. With
``--same-data`` two more rows are fitted on exactly the cloud's data (x_1 … x_{n-2-ℓ}: the LLM's training
sequence and its held-out item, which it also learns from when ``llm.refit_epochs`` > 0): ItemTransition, and
SASRec with the central SRM recipe (cross-entropy, early stopping on the LLM's own held-out item). They separate
what the model achieves from what the cloud's stale data allows.

    PYTHONPATH=. .venv/bin/python benchmarks/llm_quality.py --json runs/bench/llm_quality.json
    PYTHONPATH=. .venv/bin/python benchmarks/llm_quality.py --datasets beauty --set seed=1  # another numbering
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from clients.srm import build_srm
from clients.training import fit
from llm_cloud.checkpoint import check_same_items, read_run_config
from llm_cloud.engines import make_engine
from llm_cloud.evaluate import evaluate_engine
from llm_cloud.train import TRAIN_RESULT_FILE, TRAINING_RECIPE, kept_weights, train_llm
from lsc4rec.config import RunConfig, load_config
from lsc4rec.data import SequenceDataset, TemporalSplit
from lsc4rec.data.batching import windows
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.errors import ConfigError, run_main
from lsc4rec.floors import ItemTransition, reference_floors
from lsc4rec.metrics import metrics_from_ranks
from lsc4rec.runs import output_path, write_json
from lsc4rec.scoring import evaluate_full, full_catalogue_ranks
from lsc4rec.tables import bench_settings, dataset_names, parse_args
from server.launch import llm_checkpoint

RANKING = "the LLM's rows over its K-list; the floors and the cloud's-data rows over the full catalogue"


def columns(k: int) -> tuple[str, ...]:
    """The table's metrics for lists of ``k`` items."""
    return ("ndcg@10", "hr@10", f"recall@{k}")


VALID_ROW = "LLM, validation target x_{n-1}"  # what LLM settings are chosen by (never a training target)


def floor_rows(split: TemporalSplit, max_len: int, k: int) -> dict[str, dict[str, dict[str, float]]]:
    """Both floors from both queries, with recall@K (= HR@K over the full catalogue) beside NDCG/HR@10."""
    floors = reference_floors(split, max_len, cutoffs=(10, k))
    return {
        name: {query: table_columns(m, k) for query, m in by_query.items()}
        for name, by_query in floors.items()
    }


def table_columns(metrics: dict[str, float], k: int) -> dict[str, float]:
    """The table's columns from full-catalogue metrics at cutoffs (10, K): recall@K is HR@K there."""
    return {"ndcg@10": metrics["ndcg@10"], "hr@10": metrics["hr@10"], f"recall@{k}": metrics[f"hr@{k}"]}


def same_data_rows(config: RunConfig, split: TemporalSplit, k: int) -> dict[str, dict[str, dict[str, float]]]:
    """ItemTransition and SASRec fitted on the cloud's data only (see the module docstring)."""
    seen = [split.cloud_view(u, "valid") for u in range(split.num_users)]
    train = [split.llm_train_sequence(u) for u in range(split.num_users)]
    has_valid = np.flatnonzero([len(h) > 0 for h in train])
    valid_targets = np.array([split.llm_valid_target(u) for u in has_valid])
    max_len = config.srm.max_len

    def valid_ndcg(model) -> float:
        model.eval()
        ranks = full_catalogue_ranks(model, [train[u] for u in has_valid], valid_targets, max_len)
        return metrics_from_ranks(ranks, (10,))["ndcg@10"]

    sasrec = build_srm(config.srm, split.dataset.num_items)
    sequences = [w for seq in train for w in windows(seq, max_len)]
    fit(sasrec, sequences, valid_ndcg, config.train, config.seed)
    rows = {}
    for name, scorer in (
        ("item-transition, cloud's data", ItemTransition(seen, split.dataset.num_items)),
        ("SASRec-CE, cloud's data", sasrec),
    ):
        rows[name] = {
            query: table_columns(evaluate_full(scorer, split, "test", max_len, side=side, cutoffs=(10, k)), k)
            for query, side in (("stale", "cloud"), ("fresh", "device"))
        }
    return rows


def check_same_settings(checkpoint: Path, config: RunConfig, recipe: int) -> None:
    """Refuse a checkpoint in ``--out-dir`` trained otherwise than asked for.

    That is with other LLM settings, lag or seed, or by an older training recipe (``recipe``, from its
    ``train_result.json``; the launcher's cache keys on it too). The script reuses a finished checkpoint (so
    that a second look costs no training); one trained with other ``--set llm.*`` values, or by older training
    code, would otherwise be reported as the new one.
    """
    trained = read_run_config(checkpoint)
    ours, theirs = dataclasses.asdict(config.llm), dataclasses.asdict(trained.llm)
    differ = [f"llm.{key}" for key in ours if key != "k" and ours[key] != theirs[key]]
    differ += ["data.lag"] * (config.data.lag != trained.data.lag) + ["seed"] * (config.seed != trained.seed)
    differ += [f"training code (recipe {recipe}, now {TRAINING_RECIPE})"] * (recipe != TRAINING_RECIPE)
    if differ:
        raise ConfigError(
            "--out-dir",
            f"holds {checkpoint}, trained with other {', '.join(differ)} than asked for; give another "
            "--out-dir, or remove that folder to train it again.",
        )


def trial_checkpoint(config: RunConfig, dataset: SequenceDataset, out_dir: Path) -> Path:
    """The LLM in ``out_dir`` for these settings: trained there on first use, reused after, refused if other."""
    checkpoint = out_dir / f"{Path(config.data.dataset).name}-scratch"
    if not (checkpoint / TRAIN_RESULT_FILE).exists():
        train_llm(config, dataset, checkpoint)
    check_same_items(checkpoint, dataset)  # a folder reused from other settings is refused, not evaluated
    trained = json.loads((checkpoint / TRAIN_RESULT_FILE).read_text())
    check_same_settings(checkpoint, config, trained.get("recipe", 1))
    return checkpoint


def dataset_config(name: str, overrides: list[str]) -> RunConfig:
    """The settings ``name`` is run with: the paper's protocol on its settings file, then ``--set``."""
    protocol = [f"data.dataset={name}", "data.kcore=5", "data.numbering=random", "data.lag=2"]
    return load_config(bench_settings(name), [*protocol, *overrides])


def run_dataset(name: str, out_dir: Path | None, overrides: list[str], same_data: bool) -> dict:
    config = dataset_config(name, overrides)
    dataset = load_or_prepare(config.data, config.seed)
    checkpoint = llm_checkpoint(config) if out_dir is None else trial_checkpoint(config, dataset, out_dir)
    trained = json.loads((checkpoint / TRAIN_RESULT_FILE).read_text())
    engine = make_engine("transformers", checkpoint)
    rows = {}
    for stage, row in (("test", "LLM (scratch, over its list)"), ("valid", VALID_ROW)):
        llm = evaluate_engine(engine, dataset, config.data.lag, config.llm.k, stage=stage)
        rows[row] = {q: {c: llm[q][c] for c in columns(config.llm.k)} for q in llm}
    split = TemporalSplit(dataset, config.data.lag)
    rows.update(floor_rows(split, config.srm.max_len, config.llm.k))
    if same_data:
        rows.update(same_data_rows(config, split, config.llm.k))
    return {
        "dataset": name,
        "kcore": config.data.kcore,
        "numbering": config.data.numbering,
        "lag": config.data.lag,
        "k": config.llm.k,
        "seed": config.seed,
        "ranking": RANKING,
        "users": dataset.num_users,
        "items": dataset.num_items,
        "checkpoint": str(checkpoint),
        "llm_best_epoch": trained["best_epoch"],
        "llm_averaged_epochs": trained.get("averaged_epochs", 0),
        "llm_train_seconds": trained["seconds"],
        "llm_valid_ndcg@10": trained["best_valid_ndcg10"],
        "rows": rows,
    }


def print_table(results: list[dict]) -> None:
    """Each dataset's rows under its protocol line, with every figure the JSON holds for it."""
    for result in results:
        print(
            f"{result['dataset']}: {result['users']} users, {result['items']} items, k-core {result['kcore']}, "
            f"{result['numbering']} numbering, seed {result['seed']}, lag {result['lag']}, K = {result['k']}; "
            f"{result['ranking']}. LLM: {kept_weights(result['llm_best_epoch'], result['llm_averaged_epochs'])}, "
            f"{result['llm_train_seconds']:.0f} s, validation NDCG@10 {result['llm_valid_ndcg@10']:.4f}"
        )
        names = columns(result["k"])
        print(f"{'model':32} " + " ".join(f"{q}_{c:>9}" for q in ("stale", "fresh") for c in names))
        for model, queries in result["rows"].items():
            cells = " ".join(f"{queries[q][c]:>15.4f}" for q in ("stale", "fresh") for c in names)
            print(f"{model:32} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=dataset_names, default=["ml-latest-small", "beauty"])
    parser.add_argument(
        "--out-dir",
        type=Path,
        help="train and keep the LLMs in this folder (trials of --set llm.*); default: the launcher's cache, "
        "the LLMs the federation serves",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="training key=value")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument(
        "--same-data", action="store_true", help="add ItemTransition and SASRec fitted on the cloud's data"
    )
    args = parse_args(parser, {"data.dataset": "name the datasets with --datasets"})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out_dir is not None:
        output_path(args.out_dir, "--out-dir", folder=True)
    results = [run_dataset(name, args.out_dir, args.overrides, args.same_data) for name in args.datasets]
    print_table(results)
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    run_main(main)
