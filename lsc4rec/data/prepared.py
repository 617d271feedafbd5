"""Prepared datasets on disk: where they go, and building one only when it is not there yet."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import replace
from pathlib import Path

from lsc4rec.config import DataConfig
from lsc4rec.data.dataset import SequenceDataset, build_dataset
from lsc4rec.data.sources import NAMED, cache_dir, read_dataset, source_path
from lsc4rec.errors import DataFormatError

SOURCE_KEY = "source-files"  # meta: the raw files' fingerprint when the dataset was prepared
log = logging.getLogger(__name__)


def prepared_name(data: DataConfig, seed: int) -> str:
    """File name that encodes everything the prepared dataset depends on.

    The name ends in a short hash of the resolved location the raw data is read from, so two folders with the
    same name, or one named dataset under two data roots (``data.data_dir``), never share a cached file.
    """
    source = source_path(data.dataset, data.data_dir or None)
    where = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:8]
    label = data.dataset if data.dataset in NAMED else re.sub(r"[^A-Za-z0-9_.-]+", "_", source.name)
    return f"{label}-{where}-k{data.kcore}-{data.numbering}-s{seed}.npz"


def source_fingerprint(data: DataConfig) -> str | None:
    """A hash of the names, sizes, inodes, modification and change times of the files the raw data is read from.

    The change time too, because ``cp -p``, ``rsync -a`` and ``tar x`` keep a replaced file's modification time,
    and nothing can set the change time back.

    A folder's files, or a file's and those beside it (P5's ``datamaps.json``, RecBole's ``.item``). None when
    the raw data is not there (a machine that holds only the prepared file).
    """
    source = source_path(data.dataset, data.data_dir or None)
    folder = source if source.is_dir() else source.parent
    if not source.exists():
        return None
    try:
        stats = [(f.name, f.stat()) for f in sorted(folder.iterdir()) if f.is_file()]
    except OSError as exc:
        raise DataFormatError(
            folder, f"cannot be listed ({exc.strerror}). Make it a folder you can read."
        ) from None
    text = "\n".join(f"{name} {s.st_size} {s.st_mtime_ns} {s.st_ino} {s.st_ctime_ns}" for name, s in stats)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _prepared_dir(out_dir: str | Path | None) -> Path:
    """Where prepared datasets live: ``out_dir``, else the cache's ``prepared/``."""
    return Path(out_dir) if out_dir else cache_dir() / "prepared"


def prepare(data: DataConfig, seed: int, out_dir: str | Path | None = None) -> tuple[SequenceDataset, Path]:
    """Read, filter and number ``data.dataset``, save it under ``out_dir`` (default: the cache) and return both."""
    out = _prepared_dir(out_dir)
    read = source_fingerprint(
        data
    )  # before the read: a file changed while it is read is prepared again next time
    raw = read_dataset(data.dataset, data.data_dir or None)
    dataset = build_dataset(raw, data.kcore, data.numbering, seed, name=data.dataset)
    dataset = replace(dataset, meta={**dataset.meta, SOURCE_KEY: read})
    return dataset, dataset.save(out / prepared_name(data, seed))


def load_or_prepare(data: DataConfig, seed: int, out_dir: str | Path | None = None) -> SequenceDataset:
    """The prepared dataset for these settings, built on first use and read from disk after.

    A cached file is prepared again when the raw files changed since (an edited or replaced ratings file would
    otherwise go on being read as it was, with no sign), or when it is damaged and the raw files are there.
    """
    path = _prepared_dir(out_dir) / prepared_name(data, seed)
    if path.exists():
        now = source_fingerprint(data)
        try:
            cached = SequenceDataset.load(path)
        except DataFormatError:
            if now is None:  # no raw files to prepare it from: the error says what to do
                raise
            log.warning("%s: damaged; preparing it again from its raw files", path)
        else:
            if now is None or cached.meta.get(SOURCE_KEY) == now:
                return cached
            log.warning(
                "%s: its raw files changed since it was prepared (or it predates this check); "
                "preparing it again",
                path,
            )
    return prepare(data, seed, out_dir)[0]
