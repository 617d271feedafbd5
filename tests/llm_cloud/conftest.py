"""Fixtures of the cloud tests: a tiny learnable dataset, a tiny trained checkpoint, the service over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_cloud.processes import free_port, start_service
from lsc4rec.config import RunConfig
from lsc4rec.data import SequenceDataset
from tests.conftest import TINY_SETTINGS, synthetic_dataset

API_KEY = "test-key"


@pytest.fixture(scope="session")
def tiny_dataset() -> SequenceDataset:
    return synthetic_dataset()


@pytest.fixture(scope="session")
def tiny_config() -> RunConfig:
    return RunConfig().override(TINY_SETTINGS)


@pytest.fixture(scope="session")
def tiny_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tiny_dataset: SequenceDataset, tiny_config: RunConfig
) -> Path:
    from llm_cloud.train import train_llm

    out = tmp_path_factory.mktemp("ckpt") / "tiny-scratch"
    train_llm(tiny_config, tiny_dataset, out, progress=False)
    return out


@pytest.fixture(scope="module")
def service_url(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The candidate service on the tiny checkpoint, transformers engine, API key required."""
    log = tmp_path_factory.mktemp("service") / "service.log"
    args = ["--checkpoint", str(tiny_checkpoint), "--engine", "transformers", "--api-key", API_KEY]
    with start_service(args, free_port(), log) as server:
        yield server.url
