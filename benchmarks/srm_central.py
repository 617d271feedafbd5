"""Centralized SRMs against the reference floors: full-catalogue leave-one-out, ties pessimistic.

Protocol: 5-core, random item numbering, validation x_{n-1}, test x_n, history items excluded from the ranking;
the model is selected on validation NDCG@10 (early stopping), test figures reported once. Example:

    python benchmarks/srm_central.py --datasets beauty ml-latest-small --json runs/bench/srm_central.json
"""

from __future__ import annotations

import argparse

from clients.central import train_central
from lsc4rec.config import load_config
from lsc4rec.errors import run_main
from lsc4rec.tables import dataset_name, parse_args, report

# name -> overrides; dropout 0.5 for the sparse Amazon set, as SASRec's paper uses there.
RUNS = {
    "sasrec-ce": ["srm.model=sasrec", "srm.loss=ce"],
    "sasrec-bce": ["srm.model=sasrec", "srm.loss=bce", "train.lr=0.001"],
    "gru4rec-ce": ["srm.model=gru4rec", "srm.loss=ce", "srm.layers=1"],
    "din-ce": ["srm.model=din", "srm.loss=ce", "train.eval_users=256"],
}
PER_DATASET = {"beauty": ["srm.dropout=0.5"], "toys": ["srm.dropout=0.5"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", type=dataset_name, default=["beauty", "ml-latest-small"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="key=value for every run"
    )
    parser.add_argument("--out", default="runs/bench", help="folder for the run folders")
    parser.add_argument("--json", help="write the table as JSON to this file")
    args = parse_args(
        parser,
        {
            "data.dataset": "name the datasets with --datasets",
            "srm.model": "pick the models with --runs",
            "srm.loss": "pick the models with --runs",
            "out_dir": "use --out",
        },
    )

    rows = []
    for dataset in args.datasets:
        floors_for = None  # the user count the dataset's floor rows were written for
        for name in args.runs:
            pairs = [
                f"data.dataset={dataset}",
                f"out_dir={args.out}",
                *PER_DATASET.get(dataset, []),
                *RUNS[name],
                *args.overrides,
            ]
            cfg = load_config(None, pairs)
            settings = {key: value for key, value in cfg.evaluation().items() if key != "dataset"}
            result = train_central(cfg)
            test = result["test"]
            rows.append(
                {
                    "dataset": dataset,
                    "model": name,
                    **settings,
                    "users": result["evaluated_users"],
                    "valid ndcg@10": result["valid_ndcg@10"],
                    "hr@10": test["hr@10"],
                    "ndcg@10": test["ndcg@10"],
                    "mrr@10": test["mrr@10"],
                    "epochs": result["epochs_run"],
                    "s/epoch": result["seconds_per_epoch"],
                    "train s": result["train_seconds"],
                    "run": result["run_dir"],
                }
            )
            if result["evaluated_users"] != floors_for:  # once per dataset, unless a run evaluates others
                for floor, metrics in result["floors"].items():
                    rows.append(
                        {
                            "dataset": dataset,
                            "model": f"{floor} (floor)",
                            **settings,
                            "users": result["evaluated_users"],
                            "hr@10": metrics["fresh"]["hr@10"],
                            "ndcg@10": metrics["fresh"]["ndcg@10"],
                            "mrr@10": metrics["fresh"]["mrr@10"],
                        }
                    )
                floors_for = result["evaluated_users"]
    columns = [
        "dataset",
        "model",
        "seed",
        "kcore",
        "numbering",
        "lag",
        "users",
        "valid ndcg@10",
        "hr@10",
        "ndcg@10",
        "mrr@10",
        "epochs",
        "s/epoch",
        "train s",
    ]
    protocol = {  # each model row gives its seed, k-core, numbering and lag
        "split": "leave-one-out",
        "ranking": "full catalogue",
        "ties": "pessimistic",
        "history": "excluded",
    }
    report(
        "Centralized SRMs vs floors (test, full catalogue)", rows, columns, args.json, {"protocol": protocol}
    )


if __name__ == "__main__":
    run_main(main)
