"""Run folders and reproducibility: every run writes below its own folder, seeded the same way."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from lsc4rec.errors import ConfigError, DataFormatError
from lsc4rec.files import write_atomically


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so that a run with the same config repeats."""
    import torch  # here, not at the top: commands that only check their arguments should not wait for torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_run_dir(out_dir: str | Path, name: str) -> Path:
    """Create ``out_dir/<name>-<UTC timestamp>`` (with a numeric suffix if two runs start in one second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(out_dir) / f"{name}-{stamp}"
    path, suffix = base, 1
    while True:
        try:
            path.mkdir(parents=True)  # not exist_ok: a folder another run made in this second is its own
            return path
        except FileExistsError as exc:
            if not path.parent.is_dir():  # a file where out_dir, or a folder above it, should be
                raise ConfigError(
                    "out_dir", f"must be a folder runs can be written to, got {out_dir} ({exc})."
                ) from None
            path, suffix = Path(f"{base}-{suffix}"), suffix + 1
        except OSError as exc:
            raise ConfigError(
                "out_dir", f"must be a folder runs can be written to, got {out_dir} ({exc})."
            ) from None


def new_federation_dir(out_dir: str | Path, dataset: str) -> Path:
    """A new federation's run folder: ``out_dir/federation-<dataset's name>-<UTC time>``.

    The same however the run was started: by the launcher, or by ``flwr run`` on a SuperLink of edge boxes
    (README) without ``federation.run_dir``.
    """
    return make_run_dir(out_dir, f"federation-{Path(dataset).name}")


def output_path(path: str | Path, option: str, folder: bool = False) -> Path:
    """``path`` once the folder it goes into exists (created if needed) and is writable; else a ConfigError.

    Commands call this when they start, so that a typo in an output path fails at once, not after an hour of
    training. ``folder=True`` for an output that is itself a folder (a checkpoint).
    """
    path = Path(path)
    if not folder and os.path.isdir(path):  # os.path's test: a name too long fails below, not here
        raise ConfigError(option, f"must be a file path, got {path}, which is a folder.")
    target = path if folder else path.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            option, f"must be a path whose folder can be created, got {path} ({exc})."
        ) from None
    if not os.access(target, os.W_OK):
        raise ConfigError(option, f"must be a writable path, got {path} ({target} is read-only).")
    return path


def write_json(path: str | Path, payload: Any, atomic: bool = False) -> Path:
    """Write ``payload`` as indented JSON (non-finite floats become null, so any JSON reader accepts it).

    ``atomic``: write beside ``path`` and move the file onto it, so that a crash or a full disk leaves the old
    file or the new one, never a torn one (a checkpoint's sidecar marks it complete: a torn one stopped every
    resume). Only for a run's own files: a user's ``--json`` may be a link or ``/dev/stdout``, written through.
    A path that cannot be written (a full disk, a place such as /proc) is a ``DataFormatError`` naming it.
    """
    path = Path(path)
    text = json.dumps(_finite(payload), indent=2) + "\n"
    try:
        if atomic:
            write_atomically(path, lambda partial: partial.write_text(text))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    except OSError as exc:
        raise DataFormatError(
            path, f"cannot be written ({exc.strerror}). Free space there, or choose another path."
        ) from None
    return path


def json_line(payload: Any) -> str:
    """``payload`` as one line of JSON, non-finite floats as null (Python's ``NaN`` is not JSON)."""
    return json.dumps(_finite(payload))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
