"""Shared fixtures: the data root, small prepared datasets, and an isolated environment for every test run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lsc4rec.data.dataset import SequenceDataset

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Test models are tiny: one thread avoids OpenMP spin-waiting when the two cores are shared.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared datasets (``$LSC4REC_DATA_DIR`` or ``../shared/data``); tests needing them skip without."""
    root = Path(os.environ.get("LSC4REC_DATA_DIR", SHARED_DATA))
    if not (root / "ml-latest-small" / "ratings.csv").exists():
        pytest.skip(f"shared datasets not found at {root}; set LSC4REC_DATA_DIR")
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep prepared datasets and Flower state of tests out of the user's cache and home."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("XDG_CACHE_HOME", str(base / "cache"))
    monkeypatch.setenv("FLWR_HOME", str(base / "flwr-home"))


def make_dataset(sequences: list[list[int]], num_items: int | None = None) -> SequenceDataset:
    """A prepared dataset from literal sequences (items 1..N), for hand-worked tests."""
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
    n = num_items or int(items.max())
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64)
    return SequenceDataset(
        items,
        offsets,
        np.array([str(u) for u in range(len(sequences))]),
        np.array([str(i) for i in range(1, n + 1)]),
        np.array([""] * n),
        {"name": "synthetic"},
    )
