"""Per-round checkpoints of the global SRM (safetensors) and resuming from the newest one."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from safetensors.torch import load_file, save_file

from clients.srm import SequentialRecommender, build_srm
from lsc4rec.config import RunConfig


def save_checkpoint(run_dir: Path, server_round: int, arrays: ArrayRecord, tau: float) -> Path:
    """Write ``checkpoints/round-NNNN.safetensors`` and its sidecar JSON (round, request threshold)."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round-{server_round:04d}.safetensors"
    state = {key: tensor.contiguous() for key, tensor in arrays.to_torch_state_dict().items()}
    save_file(state, path)
    path.with_suffix(".json").write_text(json.dumps({"round": server_round, "request-tau": tau}) + "\n")
    return path


def latest_checkpoint(run_dir: Path) -> tuple[int, ArrayRecord, float] | None:
    """(round, global weights, tau) of the newest complete checkpoint in ``run_dir``, or None."""
    folder = run_dir / "checkpoints"
    for path in sorted(folder.glob("round-*.safetensors"), reverse=True):
        sidecar = path.with_suffix(".json")
        if not sidecar.exists():  # a checkpoint is complete once its sidecar is written
            continue
        meta = json.loads(sidecar.read_text())
        state: dict[str, torch.Tensor] = load_file(path)
        return int(meta["round"]), ArrayRecord(state), float(meta["request-tau"])
    return None


def load_global_srm(cfg: RunConfig, num_items: int, run_dir: Path) -> SequentialRecommender:
    """The newest checkpointed global SRM of ``run_dir``, in eval mode (for evaluation outside the federation)."""
    found = latest_checkpoint(run_dir)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'}; run the federation first.")
    model = build_srm(cfg.srm, num_items)
    model.load_state_dict(found[1].to_torch_state_dict())
    return model.eval()
