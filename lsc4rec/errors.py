"""The project's error tree: raised inside, converted once at the edge (CLI, HTTP, Flower reply).

Messages follow one form: "<field> must be <rule>, got <value>. <what to do>."
"""

from __future__ import annotations

import math
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


class LSC4RecError(Exception):
    """Base of every error the project raises on purpose; the CLI prints it as one line."""


class ConfigError(LSC4RecError, ValueError):
    """A setting is unknown or its value is invalid (a ``ValueError`` too, for library callers).

    ``key`` is a config key (``data.lag``, printed as ``config data.lag``), a command-line option (``--port``)
    or an environment variable (``$LSC4REC_API_KEY``), the last two printed as they are, so the message names
    what the user set.
    """

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key if key.startswith(('-', '$')) else f'config {key}'}: {message}")


@contextmanager
def named_as_typed(named: Mapping[str, object], options: Mapping[str, str]) -> Iterator[None]:
    """Within the block, a setting's error names the option it came from (``--rounds: must be >= 1``).

    ``options`` maps config keys to the command's options that set them, ``named`` the keys to the values those
    options were given (None: not given). A value from ``--set``, ``--config`` or a resumed run keeps its key.
    """
    try:
        yield
    except ConfigError as exc:
        if named.get(exc.key) is None:
            raise
        raise ConfigError(options[exc.key], exc.message) from None


def check_values_given(options: Iterable[tuple[str, object]]) -> None:
    """Refuse an option whose value is another option: ``--out --vllm-eager`` forgot the folder.

    The parser would take ``--vllm-eager`` as the folder's name and the command would run, for an hour of
    training perhaps, before anyone noticed.
    """
    for option, value in options:
        if value is not None and str(value).startswith("--"):
            raise ConfigError(option, f"needs a value, got the option {value}. Pass it the value it takes.")


def check_loss(loss: float, section: str, lr: float, epoch: int | str) -> None:
    """Stop a training whose loss is no longer finite: its weights, and any metric read from them, are garbage."""
    if not math.isfinite(loss):
        raise ConfigError(
            f"{section}.lr",
            f"must be small enough for training to converge, but the loss became {loss} at epoch {epoch}, "
            f"got {lr}. Lower it.",
        )


class DataFormatError(LSC4RecError):
    """A data file is missing, malformed, or yields nothing usable."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class ProtocolError(LSC4RecError):
    """A device <-> cloud message violates the wire schema or its limits."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class CloudUnavailableError(LSC4RecError):
    """The candidate service could not be reached or answered with a server error."""


def run_main(main: Callable[[], object], show_traceback: Callable[[], bool] = lambda: False) -> None:
    """Run a command's ``main``: an :class:`LSC4RecError` is one line on stderr and exit status 2.

    Every entry point (the ``lsc4rec`` command, the benchmark scripts) ends here, so a user never sees a
    traceback for input the project checks; ``show_traceback`` (``lsc4rec --debug``) lets it through.
    SIGTERM (``timeout``, a stopped job) and SIGHUP (a closed terminal, a dropped ssh session) unwind like
    Ctrl-C: Python's default would end the process without running ``finally`` blocks, leaving the servers it
    started in their own sessions running.
    """
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda number, _: sys.exit(128 + number))
    try:
        main()
    except LSC4RecError as exc:
        if show_traceback():
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
