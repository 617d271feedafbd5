"""Run folders and reproducibility: every run writes below its own folder, seeded the same way."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch so that a run with the same config repeats."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_run_dir(out_dir: str | Path, name: str) -> Path:
    """Create ``out_dir/<name>-<UTC timestamp>`` (with a numeric suffix if two runs start in one second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = Path(out_dir) / f"{name}-{stamp}"
    path, suffix = base, 1
    while path.exists():
        path, suffix = Path(f"{base}-{suffix}"), suffix + 1
    path.mkdir(parents=True)
    return path


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON (non-finite floats become null, so any JSON reader accepts it)."""
    path = Path(path)
    path.write_text(json.dumps(_finite(payload), indent=2) + "\n")
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
