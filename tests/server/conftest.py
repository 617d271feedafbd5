"""Fixtures of the federation tests: a small learnable dataset on disk, a tiny LLM, the real service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_cloud.processes import start_service
from llm_cloud.train import train_llm
from lsc4rec.config import RunConfig
from lsc4rec.data.prepared import load_or_prepare
from server.launch import free_port
from tests.llm_cloud.conftest import TINY_SETTINGS, synthetic_dataset

NODES = 4
FEDERATION_SETTINGS = [
    "data.kcore=1",
    "data.numbering=sequential",
    "srm.max_len=20",
    "srm.hidden=32",
    "llm.k=10",
    f"federation.num_nodes={NODES}",
    "federation.fraction_train=0.5",
    "federation.fraction_evaluate=0.5",
    "federation.bins=10",
    "federation.local_lr=0.005",
    "federation.timeout_s=5",
    "federation.retries=1",
]


@pytest.fixture(scope="session")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A P5-format file of 24 users walking a 40-item catalogue (item i is followed by i + 1)."""
    folder = tmp_path_factory.mktemp("synthetic")
    dataset = synthetic_dataset(num_users=24, seed=1)
    lines = [" ".join(map(str, [u + 1, *dataset.sequence(u)])) for u in range(dataset.num_users)]
    (folder / "sequential_data.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="session")
def federation_config(synthetic_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    return RunConfig().override([*TINY_SETTINGS, *FEDERATION_SETTINGS, f"data.dataset={synthetic_folder}"])


@pytest.fixture(scope="session")
def federation_checkpoint(federation_config: RunConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fed-ckpt") / "llm"
    train_llm(
        federation_config,
        load_or_prepare(federation_config.data, federation_config.seed),
        out,
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def service(federation_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real candidate service (transformers engine) on 127.0.0.1, stopped by process group."""
    log = tmp_path_factory.mktemp("fed-service") / "service.log"
    with start_service(
        ["--checkpoint", str(federation_checkpoint), "--engine", "transformers"], free_port(), log
    ) as s:
        yield s.url
