"""configs/: the settings files the README's commands and benchmarks/federation_quality.py share."""

from __future__ import annotations

from pathlib import Path

import pytest

from lsc4rec.config import load_config

REPO = Path(__file__).resolve().parents[1]
FILES = sorted((REPO / "configs").glob("*.toml"))


def test_there_is_one_per_benchmarked_dataset() -> None:
    assert [path.name for path in FILES] == [
        "bench-beauty.toml",
        "bench-ml-latest-small.toml",
        "bench-toys.toml",
    ]


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.name)
def test_each_is_a_valid_run_config_for_the_dataset_it_names(path: Path) -> None:
    cfg = load_config(path)  # an unknown key or a value out of range raises ConfigError
    assert f"bench-{cfg.data.dataset}.toml" == path.name
    assert cfg.federation.num_nodes == 10  # the benchmark's edge boxes, not one user per node
    assert f"./run_federation.sh --config configs/{path.name}" in (REPO / "README.md").read_text()


def test_toys_carries_beauty_settings_as_they_are() -> None:
    """bench-toys.toml says it is Beauty's settings unchanged; a retuned Beauty file must update it too."""
    beauty = load_config(REPO / "configs" / "bench-beauty.toml", ["data.dataset=toys"])
    assert load_config(REPO / "configs" / "bench-toys.toml") == beauty
