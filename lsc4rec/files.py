"""Writing files so that no reader ever sees half of one, and a power cut does not undo them.

The data cache, checkpoints' sidecars and the privacy ledger are written this way.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Let ``write`` fill a partial file beside ``path`` (its folder made first), then rename it into place.

    Several runs share the data cache: without this, one could read a file another is still writing, and a
    write cut short (a full disk, Ctrl-C) would leave a damaged file that every later run trips over. The
    partial name keeps ``path``'s suffix (``np.savez`` would otherwise add ``.npz``) and is unique per call;
    it is removed on every path out, and an earlier file at ``path`` stays whole until the rename.
    """
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(partial)
        flush_to_disk(partial)  # else a power cut after the rename can leave an empty file at ``path``
        os.replace(partial, path)
        flush_to_disk(path.parent)  # the rename itself
    finally:
        with contextlib.suppress(OSError):  # gone after the rename, or its folder could not be made
            partial.unlink()


def flush_to_disk(path: Path) -> None:
    """``fsync`` a file, or a folder's entries where the system allows (some cannot open or sync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not path.is_dir():
            raise
