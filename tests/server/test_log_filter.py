"""The ServerApp's log filter drops Flower's metric dumps and keeps the progress lines."""

import logging

from server.app import _ShortLines


def kept(message: str, level: int = logging.INFO) -> bool:
    return _ShortLines().filter(logging.LogRecord("flwr", level, "", 0, message, None, None))


def test_metric_dumps_are_dropped_and_progress_kept() -> None:
    dump = [
        "\t{ 1: { 'cloud-fallbacks': '0.0000e+00',",
        "\t       'rejected-malformed': '0',",
        "\t  2: { 'cloud-fallbacks': '0.0000e+00',",
        "\t            \"'2.2482e+00', '2.3485e+00', \"",
        "Aggregated MetricRecord: " + "x" * 300,
    ]
    assert not any(kept(line) for line in dump)
    assert all(kept(line) for line in ("[ROUND 2/10]", "Final results:", "\tGlobal Arrays:"))


def test_a_nodes_error_and_warnings_are_kept_whatever_their_length() -> None:
    reason = (
        "<class 'lsc4rec.errors.ConfigError'>:<'" + "the CA in LSC4REC_SERVICE_CA does not vouch " * 10 + "'>"
    )
    assert kept(f"\t> Received error in reply from node 42: {reason}")  # Flower logs it at INFO
    assert kept("final evaluation: 1 of 4 nodes failed " + reason, logging.WARNING)
    assert kept(reason, logging.ERROR)  # a simulation worker's error line
    traceback = 'Traceback (most recent call last):\n  File "clients/app.py", line 1\n' + reason
    assert not kept(traceback, logging.ERROR)  # the text of its traceback, which follows it
    assert not kept("Aggregated MetricRecord: " + reason)  # a long progress line still goes
