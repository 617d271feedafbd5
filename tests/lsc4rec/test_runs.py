"""Run folders and output paths fail with a message naming the setting, before any work is done."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lsc4rec.errors import ConfigError, DataFormatError
from lsc4rec.runs import make_run_dir, output_path, write_json


def test_output_path_creates_folders_and_refuses_what_cannot_be_written(tmp_path: Path) -> None:
    assert output_path(tmp_path / "a" / "b" / "m.json", "--json") == tmp_path / "a" / "b" / "m.json"
    assert (tmp_path / "a" / "b").is_dir()
    assert output_path(tmp_path / "ckpt", "--out", folder=True).is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="--out: must be a path whose folder can be created"):
        output_path(tmp_path / "file", "--out", folder=True)
    with pytest.raises(ConfigError, match="--json: must be a file path"):
        output_path(tmp_path / "a", "--json")


def test_make_run_dir_below_a_file_names_out_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="config out_dir: must be a folder runs can be written to"):
        make_run_dir(tmp_path / "file", "federation")
    assert make_run_dir(tmp_path / "runs", "federation").parent == tmp_path / "runs"


def test_write_json_creates_its_folder_and_writes_null_for_non_finite(tmp_path: Path) -> None:
    path = write_json(tmp_path / "new" / "x.json", {"a": float("nan"), "b": [1.0, float("inf")]})
    assert path.read_text() == '{\n  "a": null,\n  "b": [\n    1.0,\n    null\n  ]\n}\n'


def test_outputs_that_cannot_be_written_are_named(tmp_path: Path) -> None:
    """A name too long for the file system, or a place no file can go, is one line naming it, not a traceback."""
    too_long = tmp_path / ("a" * 300)
    with pytest.raises(ConfigError, match="--out: must be a path whose folder can be created"):
        output_path(too_long, "--out", folder=True)
    with pytest.raises(ConfigError, match="out_dir: must be a folder runs can be written to"):
        make_run_dir(too_long, "run")
    with pytest.raises(DataFormatError, match=r"x\.json: cannot be written"):
        write_json("/proc/x.json", {"a": 1})


def test_a_disk_that_fills_during_write_json_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """A checkpoint's sidecar marks it complete: a torn one stopped every resume until removed by hand.

    The file-size limit stands in for a full disk, in a child process so that this one keeps no limit.
    """
    path = write_json(tmp_path / "round-0002.json", {"round": 1})
    child = (
        "import resource, signal, sys\n"
        "from lsc4rec.runs import write_json\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n"
        f"write_json({str(path)!r}, {{'round': 2, 'window': [0.5] * 10000}}, atomic=True)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", child], cwd=root, capture_output=True, text=True, timeout=60)
    assert "DataFormatError" in done.stderr and "cannot be written (File too large)" in done.stderr
    assert json.loads(path.read_text()) == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["round-0002.json"]  # nothing partial left behind


def test_an_atomic_write_is_on_disk_before_and_after_its_rename(
    tmp_path: Path, disk_events: list[str]
) -> None:
    """A power cut after the rename must not leave an empty sidecar: the file is synced before it is moved in,
    and its folder after."""
    write_json(tmp_path / "round-0001.json", {"round": 1}, atomic=True)
    assert disk_events[0].startswith("fsync .round-0001.json.")
    assert disk_events[1:] == ["replace", f"fsync {tmp_path.name}"]


def test_write_json_writes_through_a_link_to_its_file(tmp_path: Path) -> None:
    """A user's --json may be a link (or /dev/stdout): written through, the link kept."""
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    write_json(tmp_path / "link.json", {"a": 1})
    assert (tmp_path / "link.json").is_symlink() and json.loads((tmp_path / "real.json").read_text()) == {
        "a": 1
    }
