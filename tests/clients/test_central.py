"""A short centralized training run on a slice of MovieLens beats the most-popular floor, and loads back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clients.central import load_central_srm, train_central
from lsc4rec.config import RunConfig
from lsc4rec.data import build_dataset, read_dataset
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.data.split import TemporalSplit
from lsc4rec.scoring import evaluate_full


def test_short_sasrec_run_beats_most_popular_on_movielens_slice(data_root: Path, tmp_path: Path) -> None:
    raw = read_dataset("ml-latest-small", data_root)
    keep = np.isin(raw.users, np.unique(raw.users)[:200])  # the first 200 users
    sliced = type(raw)(raw.users[keep], raw.items[keep], raw.times[keep], raw.source, raw.titles)
    folder = tmp_path / "slice"
    folder.mkdir()
    lines = ["userId,movieId,rating,timestamp"] + [
        f"{u},{i},4.0,{int(t)}" for u, i, t in zip(sliced.users, sliced.items, sliced.times, strict=True)
    ]
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    assert build_dataset(read_dataset(str(folder)), kcore=5).num_users == 200
    cfg = RunConfig().override(
        [
            f"data.dataset={folder}",
            f"out_dir={tmp_path / 'runs'}",
            "train.epochs=20",
            "train.batch_size=32",
            "srm.hidden=32",
            "train.patience=6",
        ]
    )
    result = train_central(cfg, progress=False)
    popular = result["floors"]["most-popular"]["fresh"]["ndcg@10"]
    assert result["test"]["ndcg@10"] > popular, (result["test"]["ndcg@10"], popular)
    assert (Path(result["run_dir"]) / "results.json").exists()

    # the saved folder loads back into the same model: the same test figure
    split = TemporalSplit(load_or_prepare(cfg.data, cfg.seed), cfg.data.lag)
    model = load_central_srm(result["run_dir"], cfg.data.dataset, split.dataset.num_items)
    assert evaluate_full(model, split, "test", cfg.srm.max_len)["ndcg@10"] == result["test"]["ndcg@10"]
    with pytest.raises(ValueError, match="not on beauty"):
        load_central_srm(result["run_dir"], "beauty", split.dataset.num_items)
    with pytest.raises(ValueError, match="do not fit"):
        load_central_srm(result["run_dir"], cfg.data.dataset, split.dataset.num_items + 1)
    with pytest.raises(FileNotFoundError, match="lsc4rec srm train"):
        load_central_srm(tmp_path, cfg.data.dataset, split.dataset.num_items)
    # a damaged folder is a ValueError that names the file, whatever safetensors or the config raised
    damaged = tmp_path / "damaged"
    shutil.copytree(result["run_dir"], damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"model\.safetensors is not readable"):
        load_central_srm(damaged, cfg.data.dataset, split.dataset.num_items)
    saved = json.loads((damaged / "config.json").read_text())
    saved["srm"]["no_such_setting"] = 1
    (damaged / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="is not a central SRM run's config"):
        load_central_srm(damaged, cfg.data.dataset, split.dataset.num_items)
