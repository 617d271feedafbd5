"""Per-round checkpoints of the global SRM (safetensors) and resuming from the newest one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
from flwr.app import ArrayRecord
from safetensors.torch import load_file, save_file

from clients.srm import SequentialRecommender, build_srm
from lsc4rec.config import RunConfig
from lsc4rec.errors import DataFormatError
from lsc4rec.files import flush_to_disk
from lsc4rec.runs import write_json

DAMAGED = "Remove that round's two files to resume from the round before, or choose another run folder."
PRIVACY_LEDGER = "privacy-ledger.json"  # in checkpoints/: the accountant after every release (save_ledger)
NOISELESS = "released without noise"  # the ledger of a private run that a resume without noise went on with


class Checkpoint(NamedTuple):
    """What a run resumes from: the global SRM after ``round``, the request gate, the privacy accountant."""

    round: int
    arrays: ArrayRecord
    tau: float
    measure: str = ""  # the live gate's signal ("" when the checkpoint predates the field)
    privacy: dict | None = None  # the DP accountant's state (strategies/privacy.py); None: not a private run
    # the rest of the server's state a resumed run goes on with, so that it repeats the uninterrupted run: the
    # node sampler, the request budget's window, the seconds spent (server/app.py); None in older checkpoints
    server: dict | None = None


def save_checkpoint(
    run_dir: Path,
    server_round: int,
    arrays: ArrayRecord,
    tau: float,
    measure: str = "",
    privacy: dict | None = None,
    server: dict | None = None,
) -> Path:
    """Write ``checkpoints/round-NNNN.safetensors`` and its sidecar JSON (round, gate, privacy, server state)."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round-{server_round:04d}.safetensors"
    state = {key: tensor.contiguous() for key, tensor in arrays.to_torch_state_dict().items()}
    save_file(state, path)
    flush_to_disk(path)  # on disk before the sidecar that says it is whole
    meta = {"round": server_round, "request-tau": tau, "request-signal": measure}
    if privacy is not None:
        meta["privacy"] = privacy
    if server:
        meta["server"] = server
    # last, and whole or not at all: the sidecar marks the round complete; a NaN (an old window's) as null
    write_json(path.with_suffix(".json"), meta, atomic=True)
    return path


def ledger_path(run_dir: Path) -> Path:
    """Where ``run_dir`` keeps its privacy ledger."""
    return run_dir / "checkpoints" / PRIVACY_LEDGER


def save_ledger(run_dir: Path, privacy: dict) -> None:
    """Write the privacy accountant's state as it is the moment a noised model is released.

    A round's checkpoint is written only once the round has ended, after the released model went out to the
    evaluating nodes: a run that dies in between would resume from the round before and release that round
    again, and an accountant read from the checkpoint would have forgotten the first release. The ledger
    forgets none; it is replaced atomically (:func:`~lsc4rec.runs.write_json`), so a crash leaves the old one
    or the new one.
    """
    write_json(ledger_path(run_dir), privacy, atomic=True)


def read_ledger(run_dir: Path) -> dict | None:
    """The accountant's state after the run's last release (``save_ledger``), or None when it has none."""
    path = ledger_path(run_dir)
    if not path.exists():
        return None
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataFormatError(
            path,
            f"is not a privacy ledger ({exc}). It holds the ε this run has spent: "
            "restore it, or start a new run.",
        ) from None
    if not isinstance(ledger, dict):
        raise DataFormatError(path, f"is not a privacy ledger (a {type(ledger).__name__}, not an object).")
    return ledger


def complete_checkpoints(run_dir: Path) -> dict[int, Path]:
    """The complete checkpoints of ``run_dir`` by round, oldest first (complete: its sidecar JSON is written)."""
    found = {}
    for path in sorted((run_dir / "checkpoints").glob("round-*.safetensors")):
        if path.with_suffix(".json").exists():
            found[_read_sidecar(path).round] = path
    return found


def read_checkpoint(path: Path) -> Checkpoint:
    """One checkpoint file with its sidecar."""
    sidecar = _read_sidecar(path)
    try:
        state: dict[str, torch.Tensor] = load_file(path)
    except Exception as exc:  # safetensors' own error kinds for a truncated or foreign file
        raise DataFormatError(path, f"is not a readable round checkpoint ({exc}). {DAMAGED}") from None
    return sidecar._replace(arrays=ArrayRecord(state))


def _read_sidecar(path: Path) -> Checkpoint:
    """The sidecar of checkpoint ``path``, without the weights; a damaged sidecar names its file."""
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        privacy = meta.get("privacy")
        server = meta.get("server")
        for name, value in (("privacy", privacy), ("server", server)):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} is {type(value).__name__}, not an object")
        return Checkpoint(
            int(meta["round"]),
            ArrayRecord(),
            float(meta["request-tau"]),
            str(meta.get("request-signal", "")),
            privacy,
            server,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # bad JSON, a key missing
        raise DataFormatError(sidecar, f"is not a round checkpoint's sidecar ({exc!r}). {DAMAGED}") from None


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint in ``run_dir``, or None."""
    found = complete_checkpoints(run_dir)
    return read_checkpoint(found[max(found)]) if found else None


def load_global_srm(
    cfg: RunConfig, num_items: int, run_dir: Path, server_round: int | None = None
) -> SequentialRecommender:
    """The global SRM of ``run_dir`` after ``server_round`` (default: the newest), in eval mode.

    For evaluation outside the federation: the central protocol on the federated model, or choosing a round.
    """
    found = complete_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoint in {run_dir / 'checkpoints'}; run the federation first.")
    chosen = max(found) if server_round is None else server_round
    if chosen not in found:
        raise FileNotFoundError(f"no checkpoint of round {chosen} in {run_dir / 'checkpoints'}.")
    model = build_srm(cfg.srm, num_items)
    model.load_state_dict(read_checkpoint(found[chosen]).arrays.to_torch_state_dict())
    return model.eval()
