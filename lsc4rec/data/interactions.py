"""The common form every reader returns: raw (user, item, time) triples with the dataset's own ids.

Also the one way readers open text and read a timestamp, so that a file in another encoding is named in the
error wherever its first bad byte lies, and a ``nan`` time never reorders a history.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from lsc4rec.errors import DataFormatError


def parse_number(text: str, name: str, path: Path, line: int) -> float:
    """A numeric field as a finite float (a ``nan`` time would sort anywhere and reorder a history).

    ``name`` words the field in the error.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataFormatError(path, f"{name} must be a finite number, got {text!r}.", line)
    return value


def parse_time(text: str, path: Path, line: int) -> float:
    """A timestamp field as a finite float."""
    return parse_number(text, "timestamp", path, line)


def record_once(
    seen: dict[tuple[str, str], int], user: str, item: str, path: Path, line: int, consumed: str = "has item"
) -> None:
    """Remember that ``user`` consumed ``item`` at ``line``; a second time is an error naming both lines.

    Consumed items are never listed, so a repeat that became a target would be a sure miss, with no error
    anywhere. Every reader refuses one (``consumed`` words it as the file does: "rated movie").
    """
    if (user, item) in seen:
        raise DataFormatError(
            path,
            f"user {user} {consumed} {item} already (line {seen[user, item]}); keep its first occurrence only.",
            line,
        )
    seen[user, item] = line


def read_titles(
    rows: Iterator[tuple[int, list[str]]],
    path: Path,
    columns: int,
    id_column: int,
    title_column: int,
    item_id: Callable[[str], str] = str.strip,
) -> dict[str, str]:
    """Titles by item id from the data rows of an item file (``rows`` from :func:`csv_rows`, header read).

    Titles go into the LLM's prompts (``llm.template = titles``), so a short row or a second row for one item
    is an error naming its line, not a title silently dropped or replaced. ``item_id`` reads an id as the
    interactions are read (a ``ValueError`` from it names the line too).
    """
    titles: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line, row in rows:
        if not row:
            continue
        if len(row) < columns:
            raise DataFormatError(path, f"expected {columns} fields, got {len(row)}.", line)
        try:
            item = item_id(row[id_column])
        except ValueError as exc:
            raise DataFormatError(path, str(exc), line) from None
        if item in lines:
            raise DataFormatError(
                path, f"item {item} has a row already (line {lines[item]}); keep one row per item.", line
            )
        lines[item], titles[item] = line, row[title_column].strip()
    return titles


@contextmanager
def open_utf8(path: Path) -> Iterator[TextIO]:
    """``path`` opened as UTF-8 text (universal newlines kept for csv); bytes that are not UTF-8 name the file.

    A byte-order mark (spreadsheets write one) is skipped, not read into the first column's name.
    """
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataFormatError(
            path, f"cannot be read ({exc.strerror}). Make it a file you can read."
        ) from None
    try:
        with handle:
            yield handle
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, f"is not UTF-8 text ({exc.reason}). Convert it to UTF-8.") from None


def csv_rows(handle: TextIO, path: Path, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each record of a delimited text file opened by :func:`open_utf8`, header included.

    A field that runs over a line break is a quote never closed: the csv module would read every line after it
    into that one field (a title, a timestamp) without a word, or refuse it once it outgrows the module's field
    limit; either is an error naming the line it starts on.
    """
    reader = csv.reader(handle, delimiter=delimiter)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataFormatError(
                path,
                f"cannot be read as delimited text ({exc}); look for a quote that is never closed.",
                start,
            ) from None
        if any("\n" in value or "\r" in value for value in row):
            raise DataFormatError(
                path, "a quote is never closed: its field runs on over the lines after it.", start
            )
        yield reader.line_num, row
        start = reader.line_num + 1


@dataclass(frozen=True)
class Interactions:
    """Raw interactions as read from a file, before filtering and re-numbering.

    Attributes
    ----------
    users, items:
        Original ids as strings, one entry per interaction.
    times:
        Sort key within a user (a timestamp, or the position in the file for datasets without timestamps).
    titles:
        Original item id -> title, where the dataset has titles (MovieLens); empty otherwise.
    source:
        The file the interactions came from, for messages.
    """

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    source: str
    titles: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)
