"""Tests never write into the user's cache: session fixtures prepare data under pytest's temporary folder."""

from pathlib import Path

import pytest

from lsc4rec.data.sources import cache_dir


def test_session_fixtures_prepare_data_in_the_tests_own_cache(
    federation_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.getbasetemp()
    assert cache_dir().is_relative_to(base)
    # the session fixture behind federation_checkpoint prepared its data in the tests' cache, not in ~/.cache
    assert list((base / "cache" / "lsc4rec" / "prepared").glob("synthetic*.npz"))
