"""lsc4rec/stopping.py: the early-stopping rule both trainings use."""

import pytest

from lsc4rec.stopping import EarlyStopping


def test_stops_after_patience_evaluations_without_a_gain_and_keeps_the_best() -> None:
    stop = EarlyStopping(patience=2, max_minutes=0)
    assert [stop.update(score, epoch) for epoch, score in enumerate([0.1, 0.3, 0.3, 0.2], 1)] == [
        True,
        True,
        False,  # a tie is no gain
        False,
    ]
    assert stop.done and stop.best == 0.3 and stop.best_epoch == 2
    stop = EarlyStopping(patience=2, max_minutes=0)
    stop.update(0.1, 1), stop.update(0.0, 2), stop.update(0.2, 3)  # a gain resets the count
    assert not stop.done and stop.best_epoch == 3


def test_stops_when_out_of_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.0 + 59, 100.0 + 61, 500.0])
    monkeypatch.setattr("lsc4rec.stopping.time.perf_counter", lambda: next(clock))
    stop = EarlyStopping(patience=10, max_minutes=1)
    assert not stop.done and stop.done  # 59 s, then 61 s, of a minute
    assert not EarlyStopping(patience=10, max_minutes=0).done  # 0: no time limit


def test_a_new_best_starts_the_patience_over() -> None:
    stopper = EarlyStopping(patience=2, max_minutes=0)
    for epoch, score in enumerate((0.1, 0.0, 0.2, 0.1)):
        stopper.update(score, epoch)
    assert stopper.stale == 1 and not stopper.done and stopper.best_epoch == 2
