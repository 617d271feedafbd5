"""Figures as a rich table on the terminal and the same figures as JSON (benchmarks and command output)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from lsc4rec.config import set_key
from lsc4rec.runs import output_path, write_json

# left-aligned; numbers right
TEXT_COLUMNS = ("dataset", "model", "loss", "engine", "signal", "row", "command", "setup")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse prints its usage line and exits 2 for anything else)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0 (0 meaning all, where an option says so)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def dataset_name(text: str) -> str:
    """An argparse type: a named dataset or an existing path.

    Checked before a multi-dataset benchmark starts: otherwise a typo in the last name is found only after the
    datasets before it have trained.
    """
    from lsc4rec.data.sources import NAMED

    if text not in NAMED and not (text and Path(text).exists()):  # Path("") is the working directory
        raise argparse.ArgumentTypeError(f"must be {', '.join(NAMED)} or an existing path, got {text!r}")
    return text


# Per-dataset settings of the benchmarks, shared with the README's commands: configs/bench-DATASET.toml (10 edge
# boxes, each dataset's LLM recipe). A dataset without one runs on the code defaults.
BENCH_SETTINGS = Path(__file__).resolve().parents[1] / "configs"


def bench_settings(dataset: str) -> Path | None:
    """The settings file the benchmarks run ``dataset`` with, if there is one (the LLM the federation uses)."""
    path = BENCH_SETTINGS / f"bench-{dataset}.toml"
    return path if path.is_file() else None


def dataset_names(text: str) -> list[str]:
    """An argparse type: a comma-separated list of :func:`dataset_name`, such as ``ml-latest-small,beauty``."""
    return [dataset_name(part) for part in text.split(",")]


def positive_ints(text: str) -> list[int]:
    """An argparse type: a comma-separated list of integers >= 1, such as ``1,32,256``."""
    return [positive_int(part) for part in text.split(",")]


def shares(text: str) -> list[float]:
    """An argparse type: a comma-separated list of shares in (0, 1], such as ``0.05,0.1``."""
    return _floats(text, lambda v: 0.0 < v <= 1.0, "shares in (0, 1]")


def non_negative_floats(text: str) -> list[float]:
    """An argparse type: a comma-separated list of numbers >= 0, such as ``0,0.3,1``."""
    return _floats(text, lambda v: v >= 0.0, "numbers >= 0")


def _floats(text: str, ok: Callable[[float], bool], what: str) -> list[float]:
    """Comma-separated floats that all pass ``ok``; else argparse's error naming ``what`` they must be."""
    problem = argparse.ArgumentTypeError(f"must be comma-separated {what}, got {text!r}")
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise problem from None
    if not all(ok(v) for v in values):
        raise problem
    return values


def parse_args(parser: argparse.ArgumentParser, owned: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The benchmark's arguments, with its ``--json`` path checked before the benchmark spends its time.

    ``owned`` maps the settings the script sets itself for each run (and labels its rows with) to what to do
    instead: a ``--set`` of one would win over the script's value and leave the row mislabelled, so it is
    refused (argparse's one-line error).
    """
    args, owned = parser.parse_args(), owned or {}
    for pair in getattr(args, "overrides", None) or []:
        key = set_key(pair)
        if key in owned:
            parser.error(f"--set {key}: this script sets it for each run; {owned[key]}")
    if getattr(args, "json", None):
        output_path(args.json, "--json")
    return args


def print_table(table: RenderableType) -> None:
    """Print ``table`` (or any rich renderable) at the terminal's width; piped or redirected, 200 columns wide.

    Rich would otherwise squeeze a redirected table's columns into 80 characters, cutting numbers short. In a log
    file the lines lose the padding rich adds to reach that width.
    """
    if sys.stdout.isatty():
        Console().print(table)
        return
    console = Console(width=200)
    with console.capture() as captured:
        console.print(table)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()), flush=True)


def report(
    title: str,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    json_path: str | None,
    extra: dict[str, Any] | None = None,
    group: Callable[[dict[str, Any]], str] | None = None,
) -> None:
    """Print ``rows`` (dicts) as a table of ``columns``; with ``json_path`` also write rows and ``extra``.

    A column no row fills is left out. ``group`` names each row's part: one table per part, in the order parts
    first appear, each with the columns its own rows fill, so that a benchmark with many kinds of row stays
    inside the terminal. The JSON keeps every row whole, in order.
    """
    parts: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        parts.setdefault(group(row) if group else "", []).append(row)
    if group:  # the title once, above its parts
        print_table(Text(title))  # as written: a dataset path may hold rich's [markup]
    for name, part in parts.items():
        table = Table(title=Text(name or title))
        shown = [c for c in columns if any(row.get(c) is not None for row in part)]
        for column in shown:
            table.add_column(
                column,
                justify="left" if column in TEXT_COLUMNS else "right",
                no_wrap=column == "row",  # a row's name is read whole; the figures' headers wrap instead
            )
        for row in part:
            table.add_row(*(_cell(row.get(column)) for column in shown))
        print_table(table)
    for line in _settings(extra or {}):  # under the table, unwrapped: a caption would wrap to its width
        print(line)
    if json_path:
        write_json(Path(json_path), {"title": title, **(extra or {}), "rows": list(rows)})


def _settings(extra: dict[str, Any]) -> list[str]:
    """The protocol beside a table, as the JSON holds it: every word or number of ``extra``, one level deep."""
    lines = []
    for key, value in extra.items():
        if isinstance(value, str | int | float):
            lines.append(f"{key}: {value}")
        elif isinstance(value, dict) and all(isinstance(v, str | int | float) for v in value.values()):
            lines.append(f"{key}: " + ", ".join(f"{k} {v}" for k, v in value.items()))
    return lines


def _cell(value: Any) -> str:
    """A value as the table shows it: floats to four places, a list as its values (the JSON keeps them whole)."""
    if isinstance(value, list):
        return " ".join(_cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)
