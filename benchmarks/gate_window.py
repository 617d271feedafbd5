"""Replay the rounds' gate calibration from finished runs: how close each window of rounds comes to the budget.

During training the live gate's τ is calibrated on the test-time histograms of the request signal from the
last ``federation.budget_window`` evaluate rounds (strategies/budget.py) and sent with the next round (in a
fleet of ``federation.fresh_lists = all``, the default; a gated fleet calibrates each round on its own
sample). One round's sample is small; older rounds describe an SRM that has trained since. (The final
evaluation requests with a τ calibrated afresh on every node under the final model, server/app.py.) Every run
records each round's histograms (``metrics.jsonl``) and the final evaluation's (``final.json``), so this
script recomputes, for each window W, the τ those rounds give and the rate it would realize, in expectation,
over the final evaluation's users, on the signal the run's final gate used. The signal reads no label, so no
test target is involved.
Example, three seeds of the default run:

    for s in 0 1 2; do ./run_federation.sh --seed $s --out runs/gate; done
    python benchmarks/gate_window.py runs/gate/federation-* --json runs/bench/gate_window.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from lsc4rec.errors import DataFormatError, LSC4RecError, run_main
from lsc4rec.outcomes import expected_rate, signal_bin_edges, threshold_for_budget
from lsc4rec.tables import parse_args, positive_ints, report, shares
from server.report import SIGNAL_HISTOGRAMS, read_final, read_rounds


def load_run(run_dir: Path) -> tuple[np.ndarray, list[list[float]]]:
    """(the final evaluation's histogram, each evaluate round's) of the signal the run's final gate used."""
    try:
        final = read_final(run_dir, (SIGNAL_HISTOGRAMS, "live gate signal"), curves=False)
    except DataFormatError:
        final = {}
    if SIGNAL_HISTOGRAMS not in final:
        raise LSC4RecError(
            f"{run_dir} is not a finished federation that recorded its signal histograms (final.json with "
            f"{SIGNAL_HISTOGRAMS!r}); run ./run_federation.sh with this version and pass its report folder.",
        )
    signal = final["live gate signal"]
    rounds = [
        r[SIGNAL_HISTOGRAMS][signal] for r in read_rounds(run_dir) if signal in r.get(SIGNAL_HISTOGRAMS, {})
    ]
    if not rounds:
        raise LSC4RecError(
            f"{run_dir}: no evaluate round recorded {signal}'s histogram, so no gate to replay."
        )
    return np.asarray(final[SIGNAL_HISTOGRAMS][signal], dtype=float), rounds


def replay(final: np.ndarray, rounds: list[list[float]], window: int, budget: float) -> float:
    """The rate the ``final`` users would have realized with τ from the last ``window`` of ``rounds``."""
    edges = signal_bin_edges(len(final))
    return expected_rate(final, edges, threshold_for_budget(np.sum(rounds[-window:], axis=0), edges, budget))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished federations' folders")
    parser.add_argument(
        "--windows",
        type=positive_ints,
        help="e.g. 1,2,3 (default: 1 to 5, as far as the runs recorded rounds)",
    )
    parser.add_argument(
        "--budgets", type=shares, default=[0.05, 0.1, 0.2], help="request budgets, e.g. 0.05,0.1"
    )
    parser.add_argument("--json", help="write the table as JSON to this file")
    args = parse_args(parser)
    loaded = [load_run(run) for run in args.runs]  # each run's files read once
    recorded = min(len(rounds) for _, rounds in loaded)
    if args.windows is None:
        args.windows = list(range(1, min(5, recorded) + 1))
    if max(args.windows) > recorded:  # a longer window would pool the same rounds under another name
        parser.error(
            f"--windows must not exceed the {recorded} evaluate rounds a run recorded, got {max(args.windows)}"
        )
    rows = []
    for budget in args.budgets:
        for window in args.windows:
            rates = [replay(final, rounds, window, budget) for final, rounds in loaded]
            rows.append(
                {
                    "budget": budget,
                    "window": window,
                    "realized rates": [float(r) for r in rates],  # one per run, in the order given
                    "mean |rate / budget - 1|": float(np.mean([abs(r / budget - 1.0) for r in rates])),
                }
            )
    report(
        "The live gate's τ from the last W rounds: realized rate over each run's final evaluation",
        rows,
        ["budget", "window", "realized rates", "mean |rate / budget - 1|"],
        args.json,
        {"runs": [str(run) for run in args.runs]},
    )


if __name__ == "__main__":
    run_main(main)
