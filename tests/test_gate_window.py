"""benchmarks/gate_window.py: the live gate's calibration replayed from a run folder's recorded histograms."""

import json
from pathlib import Path

import pytest

from server.report import ROUNDS_FILE, SIGNAL_HISTOGRAMS
from tests.conftest import load_benchmark, run_benchmark


def test_replay_pools_the_last_rounds_and_measures_the_final_users(tmp_path: Path) -> None:
    # Ten bins. Round 1: 10 users in each bin; round 2: 100 users in the top bin; round 3: 100 in the one below.
    # The final evaluation's 100 users are spread as round 1's. The run's live gate read "confidence".
    uniform, top, below = [10] * 10, [0] * 9 + [100], [0] * 8 + [100, 0]
    rounds = [
        {"round": i + 1, SIGNAL_HISTOGRAMS: {"confidence": hist, "drift": [0] * 9 + [100]}}
        for i, hist in enumerate((uniform, top, below))
    ]
    (tmp_path / ROUNDS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rounds))
    final = {"live gate signal": "confidence", SIGNAL_HISTOGRAMS: {"confidence": uniform}}
    (tmp_path / "final.json").write_text(json.dumps(final))
    benchmark = load_benchmark("gate_window")
    final_counts, round_counts = benchmark.load_run(tmp_path)
    assert final_counts.tolist() == uniform and round_counts == [uniform, top, below]  # the live signal's

    def replay(window: int, budget: float) -> float:
        return benchmark.replay(final_counts, round_counts, window, budget)

    # W = 1: 10 % of round 3 lie above tau 0.89, where 11 % of the final users are
    assert replay(1, 0.1) == pytest.approx(0.11)
    # W = 2: 20 of 200 users above tau 0.98 (round 2's top bin); 2 % of the final users
    assert replay(2, 0.1) == pytest.approx(0.02)
    # W = 3 (and any longer window): 30 of 300 above tau 0.9 + 0.1 * 80 / 110
    expected = 10 * (1 - (0.9 + 0.1 * 80 / 110)) / 0.1 / 100
    assert replay(3, 0.1) == pytest.approx(expected) == replay(5, 0.1)
    # so the script refuses a window longer than the rounds recorded, which would be W = 3 under another name
    done = run_benchmark("gate_window", str(tmp_path), "--windows", "1,5")
    assert (
        done.returncode == 2
        and "--windows must not exceed the 3 evaluate rounds a run recorded, got 5" in done.stderr
    )
    # without --windows: 1 to 5, as far as the run recorded rounds
    done = run_benchmark("gate_window", str(tmp_path), "--json", str(tmp_path / "w.json"))
    rows = json.loads((tmp_path / "w.json").read_text())["rows"]
    assert done.returncode == 0 and {row["window"] for row in rows} == {1, 2, 3}, done.stderr
    # the JSON holds the realized rates as numbers, one per run, and the table prints them
    one = next(row for row in rows if (row["budget"], row["window"]) == (0.05, 1))
    assert one["realized rates"] == [pytest.approx(benchmark.replay(final_counts, round_counts, 1, 0.05))]
    assert f"{one['realized rates'][0]:.4f}" in done.stdout
