"""Reader for P5's ``sequential_data.txt``: one user per line, ``user item item ...`` in chronological order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lsc4rec.data.interactions import Interactions, open_utf8, record_once
from lsc4rec.errors import DataFormatError


def read_p5(folder_or_file: str | Path) -> Interactions:
    """Read a P5 sequential file; the position in the line is the time (the Amazon sets carry no timestamps).

    ``datamaps.json`` beside it is checked when present (every item id must be in ``id2item``); P5's files
    have no titles.
    """
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / "sequential_data.txt"
    if not path.is_file():
        raise DataFormatError(path, "file not found. Put P5's sequential_data.txt there.")
    users, items, times = [], [], []
    first_line: dict[str, int] = {}  # user id -> the line that holds the user's sequence
    seen: dict[tuple[str, str], int] = {}  # (user, item) -> its line
    with open_utf8(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            bad = next((f for f in fields if not (f.isascii() and f.isdigit())), None)
            if bad is not None:
                raise DataFormatError(path, f"ids must be non-negative integers, got {bad!r}.", line_no)
            if len(fields) < 2:
                raise DataFormatError(path, "a line must hold a user id and at least one item id.", line_no)
            fields = [str(int(f)) for f in fields]  # 007 is item 7: one id, however it is written
            user = fields[0]
            if user in first_line:  # positions are times, so two lines of one user would interleave
                raise DataFormatError(
                    path,
                    f"user {user} already has a line (line {first_line[user]}); P5 holds one per user.",
                    line_no,
                )
            first_line[user] = line_no
            for item in fields[1:]:
                record_once(seen, user, item, path, line_no)
            users.extend([user] * (len(fields) - 1))
            items.extend(fields[1:])
            times.extend(range(len(fields) - 1))
    if not users:
        raise DataFormatError(path, "holds no interactions.")
    _check_datamaps(path.parent / "datamaps.json", set(items))
    return Interactions(np.array(users), np.array(items), np.array(times, dtype=np.float64), str(path))


def _check_datamaps(datamaps: Path, items: set[str]) -> None:
    if not datamaps.is_file():
        return
    try:
        with open_utf8(datamaps) as handle:
            tree = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataFormatError(datamaps, f"is not valid JSON ({exc.msg}).", exc.lineno) from None
    except RecursionError:
        raise DataFormatError(datamaps, "is not P5's datamaps (nested too deeply).") from None
    id2item = tree.get("id2item") if isinstance(tree, dict) else None
    if not isinstance(id2item, dict):
        raise DataFormatError(datamaps, "must be P5's JSON object with an id2item mapping of item ids.")
    if id2item:
        unknown = items.difference(id2item)
        if unknown:
            raise DataFormatError(
                datamaps, f"id2item lacks {len(unknown)} item ids, e.g. {sorted(unknown)[:3]}."
            )
