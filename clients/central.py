"""The centralized SRM baseline: one model trained on every user's device view, no federation.

It is the reference the federated SRM is held against (same data, split, model and evaluation). Evaluation
is leave-one-out over the full catalogue, history items excluded, ties pessimistic; the reference floors are
evaluated beside it under the same protocol.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from clients.node import NodeData
from clients.srm import SequentialRecommender, build_srm
from clients.training import fit
from lsc4rec.config import RunConfig, SRMConfig
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.data.split import TemporalSplit
from lsc4rec.floors import reference_floors
from lsc4rec.runs import make_run_dir, seed_everything, write_json
from lsc4rec.scoring import evaluate_full


def evaluation_users(num_users: int, sample: int, seed: int) -> np.ndarray:
    """All users, or a seeded sample of ``sample`` of them (sorted) when ``0 < sample < num_users``."""
    if 0 < sample < num_users:
        return np.sort(np.random.default_rng(seed).choice(num_users, sample, replace=False))
    return np.arange(num_users)


def train_central(config: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Train, early-stop on validation NDCG@10, evaluate on test; write config and results to a run folder."""
    seed_everything(config.seed)
    dataset = load_or_prepare(config.data, config.seed)
    split = TemporalSplit(dataset, config.data.lag)
    split.check_trainable("SRM")
    srm_config = config.srm
    model = build_srm(srm_config, dataset.num_items)
    name = f"srm-{Path(config.data.dataset).name}-{srm_config.model}-{srm_config.loss}"
    run_dir = make_run_dir(config.out_dir, name)
    config.save(run_dir / "config.json")
    # the baseline is one node that holds every user: the same windows a node trains on, of all of them
    sequences = NodeData(split, np.arange(split.num_users)).training_windows(srm_config.max_len)

    users = evaluation_users(split.num_users, config.train.eval_users, config.seed)

    def valid_ndcg(m: torch.nn.Module) -> float:
        m.eval()
        return evaluate_full(m, split, "valid", srm_config.max_len, users)["ndcg@10"]

    started = time.perf_counter()
    result = fit(model, sequences, valid_ndcg, config.train, config.seed, progress)
    test = evaluate_full(model, split, "test", srm_config.max_len, users)
    report = {
        "protocol": {
            "dataset": config.data.dataset,
            "kcore": config.data.kcore,
            "numbering": config.data.numbering,
            "split": "leave-one-out (valid x_{n-1}, test x_n)",
            "ranking": "full catalogue, history excluded",
            "ties": "pessimistic",
            "model": srm_config.model,
            "loss": srm_config.loss,
        },
        "valid_ndcg@10": result.best_valid,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": result.seconds,
        "seconds_per_epoch": result.seconds / max(result.epochs_run, 1),
        "wall_seconds": time.perf_counter() - started,
        "test": test,
        "evaluated_users": len(users),
        "floors": reference_floors(split, srm_config.max_len, users),
        "history": result.history,
        "run_dir": str(run_dir),
    }
    write_json(run_dir / "results.json", report)
    save_file(model.state_dict(), run_dir / "model.safetensors")
    return report


def load_central_srm(run_dir: str | Path, dataset: str, num_items: int) -> SequentialRecommender:
    """The SRM a :func:`train_central` run folder holds, in eval mode, checked to be trained on ``dataset``.

    Only the folder's ``srm`` table (the architecture) and ``data.dataset`` are read, so folders written by older
    versions, whose other tables had keys since removed, still load.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a central SRM run folder (config.json and model.safetensors); "
            "make one with `lsc4rec srm train`."
        )
    try:
        saved = json.loads((run_dir / "config.json").read_text())
        trained_on, srm = saved["data"]["dataset"], SRMConfig(**saved["srm"])
    except (ValueError, KeyError, TypeError) as exc:  # not JSON, a table missing, an unknown SRM setting
        raise ValueError(f"{run_dir / 'config.json'} is not a central SRM run's config ({exc!r}).") from None
    if trained_on != dataset:
        raise ValueError(f"{run_dir} holds an SRM trained on {trained_on}, not on {dataset}.")
    model = build_srm(srm, num_items)
    try:
        weights = load_file(run_dir / "model.safetensors")
    except Exception as exc:  # safetensors' own error kinds for a truncated or foreign file
        raise ValueError(f"{run_dir / 'model.safetensors'} is not readable ({exc}).") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError:  # shapes differ: the same dataset name, other data settings (k-core, lag, ...)
        raise ValueError(
            f"{run_dir} holds an SRM whose weights do not fit {num_items} items; was it trained with other "
            "data settings?"
        ) from None
    return model.eval()
