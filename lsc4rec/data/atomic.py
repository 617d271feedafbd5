"""Reader for RecBole atomic files: ``<name>.inter`` (tab-separated, typed header) and optional ``<name>.item``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lsc4rec.data.interactions import Interactions, csv_rows, open_utf8, parse_time, read_titles, record_once
from lsc4rec.errors import DataFormatError


def read_atomic(path: str | Path) -> Interactions:
    """Read ``user_id:token``, ``item_id:token`` and, if present, ``timestamp:float`` from a ``.inter`` file.

    Without a timestamp column the file order is the time. Titles come from ``title:token_seq`` (or
    ``movie_title:token_seq``) in the ``.item`` file beside it.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("*.inter"))
        if not found:
            raise DataFormatError(path, "holds no .inter file. Give a RecBole atomic .inter file.")
        if len(found) > 1:  # RecBole's pre-split benchmarks hold train, valid and test files side by side
            names = ", ".join(f.name for f in found)
            raise DataFormatError(path, f"holds several .inter files ({names}). Pass the one to read.")
        path = found[0]
    if not path.is_file():
        raise DataFormatError(path, "file not found.")
    with open_utf8(path) as handle:
        rows = csv_rows(handle, path, "\t")
        header = [h.split(":")[0].strip() for h in next(rows, (1, []))[1]]
        for needed in ("user_id", "item_id"):
            if needed not in header:
                raise DataFormatError(path, f"header must have a {needed}:token column, got {header}.", 1)
        iu, ii = header.index("user_id"), header.index("item_id")
        it = header.index("timestamp") if "timestamp" in header else None
        users, items, times = [], [], []
        seen: dict[tuple[str, str], int] = {}  # (user, item) -> its line
        for line_no, row in rows:
            if not row:
                continue
            if len(row) != len(header):
                raise DataFormatError(
                    path, f"expected {len(header)} tab-separated fields, got {len(row)}.", line_no
                )
            if not (row[iu].strip() and row[ii].strip()):
                raise DataFormatError(path, "user_id and item_id must not be empty.", line_no)
            user, item = row[iu].strip(), row[ii].strip()
            record_once(seen, user, item, path, line_no)
            users.append(user)
            items.append(item)
            times.append(parse_time(row[it], path, line_no) if it is not None else float(line_no))
    if not users:
        raise DataFormatError(path, "holds no interactions.")
    return Interactions(np.array(users), np.array(items), np.array(times), str(path), _read_titles(path))


def _read_titles(inter: Path) -> dict[str, str]:
    item_file = inter.with_suffix(".item")
    if not item_file.is_file():
        return {}
    with open_utf8(item_file) as handle:
        rows = csv_rows(handle, item_file, "\t")
        header = [h.split(":")[0].strip() for h in next(rows, (1, []))[1]]
        title = next((c for c in ("title", "movie_title") if c in header), None)
        if "item_id" not in header or title is None:
            return {}
        return read_titles(rows, item_file, len(header), header.index("item_id"), header.index(title))
