"""Where raw data lives and which reader reads it.

Resolution order for the data root: an explicit ``data_dir`` (``--data-dir``), else ``$LSC4REC_DATA_DIR``, else a
per-user cache (``$XDG_CACHE_HOME/lsc4rec/data``, ``~/.cache`` without it). MovieLens latest-small is downloaded
from GroupLens into ``ml-latest-small/`` under whichever root that is, when it is missing there and the machine is
online; every other miss is a clear message naming the folder.
"""

from __future__ import annotations

import http.client
import io
import os
import urllib.request
import zipfile
import zlib
from pathlib import Path

from lsc4rec.data.atomic import read_atomic
from lsc4rec.data.interactions import Interactions
from lsc4rec.data.movielens import read_movielens
from lsc4rec.data.p5 import read_p5
from lsc4rec.errors import DataFormatError
from lsc4rec.files import write_atomically

# Named datasets: folder below the data root, and the reader for it.
NAMED = {
    "ml-latest-small": ("ml-latest-small", read_movielens),
    "beauty": ("p5/beauty", read_p5),
    "toys": ("p5/toys", read_p5),
}
# Formats of a dataset given by path: the file name (or suffix) that marks it, and its reader.
FORMATS = {
    ".inter": read_atomic,
    "sequential_data.txt": read_p5,
    "ratings.csv": lambda path: read_movielens(path if path.is_dir() else path.parent),
}
MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"


def cache_dir() -> Path:
    """Per-user cache for downloads, prepared datasets and trained checkpoints."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lsc4rec"


def data_root(data_dir: str | Path | None = None) -> Path:
    """The raw-data root, by the resolution order in the module docstring."""
    if data_dir:
        return Path(data_dir)
    if os.environ.get("LSC4REC_DATA_DIR"):
        return Path(os.environ["LSC4REC_DATA_DIR"])
    return cache_dir() / "data"


def source_path(dataset: str, data_dir: str | Path | None = None) -> Path:
    """The file or folder ``dataset`` is read from: a named dataset's folder below the data root, else the path."""
    return data_root(data_dir) / NAMED[dataset][0] if dataset in NAMED else Path(dataset)


def read_dataset(dataset: str, data_dir: str | Path | None = None) -> Interactions:
    """Read a named dataset (``ml-latest-small``, ``beauty``, ``toys``) or a path to a supported file/folder."""
    path = source_path(dataset, data_dir)
    if dataset in NAMED:
        reader = NAMED[dataset][1]
        if dataset == "ml-latest-small" and not (path / "ratings.csv").exists():
            _download_movielens(path)
        if not path.exists():
            raise DataFormatError(
                path,
                f"dataset {dataset!r} not found. Put its files in this folder, or point "
                "--data-dir / LSC4REC_DATA_DIR at the folder that holds it.",
            )
        return reader(path)
    if not path.exists():
        names = ", ".join(NAMED)
        raise DataFormatError(path, f"is neither a known dataset ({names}) nor an existing path.")
    held = _formats_at(path)
    if len(held) > 1:
        raise DataFormatError(
            path, f"holds datasets of more than one format ({', '.join(held)}); give the file to read."
        )
    if not held:
        raise DataFormatError(path, f"has no {' or '.join(FORMATS)} file to read.")
    return FORMATS[held[0]](path)


def _formats_at(path: Path) -> list[str]:
    """The formats of ``FORMATS`` that ``path`` is in: a file by its name, a folder by the files it holds."""
    if not path.is_dir():
        return [name for name in FORMATS if name in (path.name, path.suffix)]
    return [name for name in FORMATS if any(path.glob(f"*{name}" if name.startswith(".") else name))]


def _download_movielens(target: Path) -> None:
    """Fetch ml-latest-small from GroupLens into ``target``; on failure say where to put the files."""
    try:
        with urllib.request.urlopen(MOVIELENS_URL, timeout=30) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
            files = {
                Path(m).name: archive.read(m) for m in archive.namelist() if m.endswith((".csv", ".txt"))
            }
    except (OSError, http.client.HTTPException, zipfile.BadZipFile, zlib.error) as exc:  # cut short, damaged
        raise DataFormatError(
            target,
            f"MovieLens latest-small is not here and could not be downloaded ({exc}). "
            f"Unzip {MOVIELENS_URL} into this folder, or point --data-dir / LSC4REC_DATA_DIR at the folder "
            "that holds ml-latest-small/.",
        ) from None
    try:
        # ratings.csv last: its presence is what says the download is complete (read_dataset)
        for name in sorted(files, key=lambda n: n == "ratings.csv"):
            write_atomically(target / name, lambda partial, data=files[name]: partial.write_bytes(data))
    except OSError as exc:
        raise DataFormatError(
            target, f"cannot hold the downloaded MovieLens files ({exc.strerror}). Set LSC4REC_DATA_DIR."
        ) from None
