"""Reader for MovieLens CSV releases (``ratings.csv`` and, for titles, ``movies.csv``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lsc4rec.data.interactions import (
    Interactions,
    csv_rows,
    open_utf8,
    parse_number,
    parse_time,
    read_titles,
    record_once,
)
from lsc4rec.errors import DataFormatError

RATINGS_COLUMNS = ("userId", "movieId", "rating", "timestamp")


def read_movielens(folder: str | Path) -> Interactions:
    """Read ``ratings.csv`` (every rating is an interaction) and the titles from ``movies.csv`` if present.

    Ratings are implicit feedback here, as in the LSC4Rec and SASRec protocols; order is by timestamp.
    """
    folder = Path(folder)
    ratings = folder / "ratings.csv"
    if not ratings.is_file():
        raise DataFormatError(ratings, "file not found. Put MovieLens ratings.csv (and movies.csv) there.")
    users, items, times = [], [], []
    rated: dict[tuple[str, str], int] = {}  # (userId, movieId) -> the line that rated it
    with open_utf8(ratings) as handle:
        rows = csv_rows(handle, ratings)
        header = next(rows, (1, None))[1]
        if header is None or tuple(h.strip() for h in header[:4]) != RATINGS_COLUMNS:
            raise DataFormatError(
                ratings, f"header must start with {','.join(RATINGS_COLUMNS)}, got {header or 'nothing'}.", 1
            )
        for line, row in rows:
            if not row:
                continue
            if len(row) != len(header):
                raise DataFormatError(ratings, f"expected {len(header)} columns, got {len(row)}.", line)
            user, item, rating, stamp = (value.strip() for value in row[:4])
            if not all(value.isascii() and value.isdigit() for value in (user, item)):
                raise DataFormatError(
                    ratings,
                    f"userId and movieId must be non-negative integers, got {user!r}, {item!r}.",
                    line,
                )
            user, item = str(int(user)), str(int(item))  # 007 is movie 7: one id, however it is written
            record_once(rated, user, item, ratings, line, "rated movie")
            # ratings are read as implicit feedback, but one that is no number marks a damaged row
            parse_number(rating, "rating", ratings, line)
            times.append(parse_time(stamp, ratings, line))
            users.append(user)
            items.append(item)
    if not users:
        raise DataFormatError(ratings, "has a header but no ratings.")
    return Interactions(np.array(users), np.array(items), np.array(times), str(ratings), _read_titles(folder))


def _read_titles(folder: Path) -> dict[str, str]:
    movies = folder / "movies.csv"
    if not movies.is_file():
        return {}
    with open_utf8(movies) as handle:
        rows = csv_rows(handle, movies)
        header = next(rows, (1, None))[1]
        if header is None or [h.strip() for h in header[:2]] != ["movieId", "title"]:
            raise DataFormatError(
                movies, f"header must start with movieId,title, got {header or 'nothing'}.", 1
            )
        return read_titles(rows, movies, 2, 0, 1, _canonical)


def _canonical(movie_id: str) -> str:
    """A movieId as the ratings are read: ``007`` is movie 7."""
    movie_id = movie_id.strip()
    if not (movie_id.isascii() and movie_id.isdigit()):
        raise ValueError(f"movieId must be a non-negative integer, got {movie_id!r}.")
    return str(int(movie_id))
