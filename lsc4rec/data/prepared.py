"""Prepared datasets on disk: where they go, and building one only when it is not there yet."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from lsc4rec.config import DataConfig
from lsc4rec.data.dataset import SequenceDataset, build_dataset
from lsc4rec.data.sources import NAMED, cache_dir, read_dataset, source_path


def prepared_name(data: DataConfig, seed: int) -> str:
    """File name that encodes everything the prepared dataset depends on.

    The name ends in a short hash of the resolved location the raw data is read from, so two folders with the
    same name, or one named dataset under two data roots (``data.data_dir``), never share a cached file.
    """
    source = source_path(data.dataset, data.data_dir or None)
    where = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:8]
    label = data.dataset if data.dataset in NAMED else re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name)
    return f"{label}-{where}-k{data.kcore}-{data.numbering}-s{seed}.npz"


def prepare(data: DataConfig, seed: int, out_dir: str | Path | None = None) -> tuple[SequenceDataset, Path]:
    """Read, filter and number ``data.dataset``, save it under ``out_dir`` (default: the cache) and return both."""
    out = Path(out_dir) if out_dir else cache_dir() / "prepared"
    raw = read_dataset(data.dataset, data.data_dir or None)
    dataset = build_dataset(raw, data.kcore, data.numbering, seed, name=data.dataset)
    return dataset, dataset.save(out / prepared_name(data, seed))


def load_or_prepare(data: DataConfig, seed: int, out_dir: str | Path | None = None) -> SequenceDataset:
    """The prepared dataset for these settings, built on first use and read from disk after."""
    out = Path(out_dir) if out_dir else cache_dir() / "prepared"
    path = out / prepared_name(data, seed)
    if path.exists():
        return SequenceDataset.load(path)
    return prepare(data, seed, out)[0]
