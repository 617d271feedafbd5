"""The per-round lines of a run survive a crash in the middle of writing one."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.axes
import numpy as np
import pytest
from rich.console import Console
from rich.markdown import Markdown

import server.report as report
from lsc4rec import records
from lsc4rec.config import FederationConfig
from lsc4rec.errors import DataFormatError
from server.report import (
    ROUNDS_FILE,
    _cell,
    _held_alpha,
    _plain,
    append_round,
    read_rounds,
    resolved_protocol,
)
from tests.conftest import ALPHAS, BLEND_WITHIN_A_SE, final_sums, outcome_from_users


def test_a_line_torn_by_a_crash_is_redone_and_the_file_stays_readable(tmp_path: Path) -> None:
    append_round(tmp_path, {"round": 1})
    with (tmp_path / ROUNDS_FILE).open("a") as handle:
        handle.write('{"round": 2, "va')  # the crash
    assert [r["round"] for r in read_rounds(tmp_path)] == [1]  # what a resume reads first
    append_round(tmp_path, {"round": 2})  # the resumed run redoes round 2
    assert read_rounds(tmp_path) == [{"round": 1}, {"round": 2}]  # the report reads the whole file
    (tmp_path / ROUNDS_FILE).write_text('{"round": 1}\nnot json\n{"round": 3}\n')
    with pytest.raises(DataFormatError, match=rf"{ROUNDS_FILE}:2: is not a round's figures"):
        read_rounds(tmp_path)


def test_a_non_finite_figure_is_written_as_null_so_every_line_is_json(tmp_path: Path) -> None:
    append_round(tmp_path, {"round": 1, "train-loss": float("nan"), "x": [1.0, float("inf")]})

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    line = (tmp_path / ROUNDS_FILE).read_text().splitlines()[0]
    assert json.loads(line, parse_constant=refuse) == {"round": 1, "train-loss": None, "x": [1.0, None]}


@pytest.mark.parametrize(
    ("measure", "figures", "shown"),
    [
        ("auto", {"request signal": "kendall"}, "auto (validation chose kendall)"),
        ("drift", {"request signal": "drift"}, "drift"),
        ("auto", {}, "auto"),  # a report from before validation's choice was recorded
    ],
)
def test_the_protocol_names_the_signal_validation_chose(measure: str, figures: dict, shown: str) -> None:
    protocol = {"lag": 2, "measure": measure}
    assert resolved_protocol(protocol, figures) == {"lag": 2, "measure": shown}
    assert protocol["measure"] == measure  # the run's own protocol is left as configured


def test_a_protocol_value_prints_letter_for_letter_through_markdown() -> None:
    """summary.md is Markdown (and printed rendered): a dataset path must not turn into emphasis or a tag."""
    path = "/data/_my_/ratings*2*.csv <x> [a]"
    console = Console(width=200)
    with console.capture() as captured:
        console.print(Markdown(f"Protocol: dataset {_plain(path)}"))
    assert f"Protocol: dataset {path}" in captured.get()


@pytest.mark.parametrize("rounds", [1, 3])
def test_the_rounds_plot_numbers_its_rounds_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rounds: int
) -> None:
    """A one-round run once got ticks at 0.96, 0.98, ...: rounds are whole numbers, and no round is invented."""
    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)  # keep the figure to read its axes
    lines = [
        {"round": r, "valid-fused-ndcg@10": 0.04, "realized-request-rate": 0.05} for r in range(1, rounds + 1)
    ]
    report._plot_rounds(tmp_path / "v.png", lines, {"live gate realized request rate": 0.05}, 0.05)
    for axes in figures[0].axes:
        low, high = axes.get_xlim()
        shown = [t for t in axes.get_xticks() if low <= t <= high]
        assert shown == list(range(1, rounds + 1))


def test_summary_tables_right_align_their_figures() -> None:
    rows = [{"ranking": "fused", "list": "stale", "ndcg@10": 0.034, "users": 610}]
    assert report._markdown_table(rows)[:2] == ["| ranking | list | ndcg@10 | users |", "|---|---|---:|---:|"]


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ('{"protocol": {', "cannot be read as a run's report"),  # cut short
        ("{}", "is not a finished run's report \\(no protocol, rankings, policies\\)"),
        ("[1, 2]", "is not a finished run's report"),  # JSON, but not a report
    ],
)
def test_a_damaged_final_report_is_named_before_any_evaluation(
    tmp_path: Path, content: str, said: str
) -> None:
    """The benchmark scripts re-read run folders a user names: one line naming the file, not a KeyError."""
    (tmp_path / report.FINAL_FILE).write_text(content)
    with pytest.raises(DataFormatError, match=f"final.json: {said}.*--resume RUN"):
        report.read_final(tmp_path)
    (tmp_path / report.FINAL_FILE).write_text('{"protocol": {}, "rankings": [], "policies": []}')
    assert report.read_final(tmp_path)["rankings"] == []


def test_the_report_serves_a_blend_only_beyond_its_margin_over_the_better_model() -> None:
    """Validation's best blend within one paired se of SRM-only: the report's α is SRM-only's, at every row."""
    outcome = outcome_from_users(np.full(4, 0.5), BLEND_WITHIN_A_SE, BLEND_WITHIN_A_SE + 0.1, bins=2)
    sums = final_sums(outcome)
    floors = {"item-transition": {"stale": {"ndcg@10": 0.02}, "fresh": {"ndcg@10": 0.05}}}
    for margin, alpha in ((1.0, 0.0), (0.7, 0.5), (0.0, 0.5)):
        fed = FederationConfig(measure="drift", alpha_margin_se=margin)
        figures = report.report_figures(sums, fed, floors, {}, "drift")
        assert figures["alpha"] == alpha and {r["alpha"] for r in figures["signals"]} == {alpha}
        # what the margin decided on, in final.json whatever it decided
        lead = {"best alpha": 0.5, "better single alpha": 0.0, "best lead": pytest.approx(0.1)}
        assert lead.items() <= figures["valid"].items()
        assert figures["valid"]["lead paired se"] == pytest.approx(np.sqrt(0.2 / 3 / 4))
        fused = next(r for r in figures["rankings"] if (r["ranking"], r["list"]) == ("fused", "stale"))
        assert fused["ndcg@10"] == pytest.approx(BLEND_WITHIN_A_SE[:, ALPHAS.index(alpha)].mean())
        held = "; its best blend, α = 0.50, beat SRM-only by no more than the margin the protocol names"
        assert _held_alpha(figures) == (held if alpha == 0.0 else "")  # the summary's note beside α
    assert report.alpha_rule(fed) == "validation's best"
    llm_wins = outcome_from_users(np.full(4, 0.5), BLEND_WITHIN_A_SE[:, ::-1], BLEND_WITHIN_A_SE, bins=2)
    figures = report.final_figures(llm_wins, llm_wins, floors, {}, 1.0)
    assert figures["alpha"] == 1.0 and "beat LLM-only by no more" in _held_alpha(figures)


@pytest.mark.parametrize(
    ("alpha", "said", "left_out"), [(0.0, "SRM-only", "LLM-only"), (1.0, "LLM-only", "SRM-only")]
)
def test_a_single_model_served_has_no_margin_over_itself(alpha: float, said: str, left_out: str) -> None:
    margins = {
        f"over {name}": {"ndcg@10": 0.0 if name == said else 0.002, "paired se": 0.001}
        for name in (said, left_out)
    }
    line = report._margins({"alpha": alpha, "fused margins": margins})[1]
    assert line.startswith(
        f"Fused NDCG@10 on the stale list (at α = {alpha:.0f} fused is {said}), over {left_out} +0.0020"
    )
    assert f"over {said}" not in line
    blend = report._margins({"alpha": 0.5, "fused margins": margins})[1]
    assert "over SRM-only" in blend and "over LLM-only" in blend and "fused is" not in blend


def test_a_finished_runs_report_is_computed_again_from_its_saved_sums(tmp_path: Path) -> None:
    """``refigure``: the saved sums under another margin, the protocol saying which; the rest as saved."""
    outcome = outcome_from_users(np.full(4, 0.5), BLEND_WITHIN_A_SE, BLEND_WITHIN_A_SE + 0.1, bins=2)
    sums = final_sums(outcome)
    floors = {"item-transition": {"stale": {"ndcg@10": 0.02}, "fresh": {"ndcg@10": 0.05}}}
    report.save_final_sums(tmp_path, sums, floors, {"federation seconds": 9.0}, "drift", {"dataset": "d"})
    for margin, alpha, rule in ((1.0, 0.0, "validation's best unless within 1 paired se"), (0.0, 0.5, "")):
        figures, protocol = report.refigure(
            tmp_path, FederationConfig(measure="drift", alpha_margin_se=margin)
        )
        assert figures["alpha"] == alpha and figures["federation seconds"] == 9.0
        assert protocol["dataset"] == "d" and protocol["α choice"].startswith(rule or "validation's best")
    with pytest.raises(DataFormatError, match=r"final-sums\.json: cannot be read .*'valid-topk-alphas'"):
        report.refigure(tmp_path, FederationConfig(measure="topk"))  # a signal the run did not evaluate


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "No such file"),  # a run from before the sums were saved
        ("{", "Expecting property name"),
        ('{"sums": {}, "floors": {}, "extra": {}}', "'live_measure'"),
    ],
)
def test_a_run_without_readable_sums_is_named_before_its_report_is_computed_again(
    tmp_path: Path, content: str | None, said: str
) -> None:
    if content is not None:
        (tmp_path / report.FINAL_SUMS_FILE).write_text(content)
    with pytest.raises(DataFormatError, match=f"final-sums.json: cannot be read .*{said}.*before 2026-12-07"):
        report.refigure(tmp_path, FederationConfig())


def test_a_figure_below_a_thousandth_keeps_two_significant_digits() -> None:
    """The random spread (about 0.0002) is what gains are read against: 0.00017 printed as 0.0002 at four decimals."""
    values = (0.00017, -0.00015, 0.000009, 2.7e-17, 0.0016, 0.0, 3, "drift")
    assert [_cell(v) for v in values] == [
        "0.00017",
        "-0.00015",
        "0.0000090",
        "0.0000",
        "0.0016",
        "0.0000",
        "3",
        "drift",
    ]


def test_a_gated_runs_report_has_the_live_gate_and_no_curve_it_cannot_measure(tmp_path: Path) -> None:
    """``final_figures(live_budget=...)``: the fresh sums are what the fleet served; no random or signal table."""
    score = np.linspace(0.0, 1.0, 8)
    stale = np.full((8, 3), 0.1)  # [users, α]
    served = stale.copy()
    served[6:] = 0.5  # the two users the gate sent got a better list
    outcome = outcome_from_users(score, stale, served, bins=4)
    floors = {"item-transition": {"stale": {"ndcg@10": 0.02}, "fresh": {"ndcg@10": 0.05}}}
    extra = {
        "live gate tau": 0.7,
        "live gate realized request rate": 0.25,
        "live gate tau calibrated on users": 8,
        "users missing from the final evaluation": 0,
    }
    figures = report.final_figures(outcome, outcome, floors, extra, 1.0, live_budget=0.2)
    never, live = figures["policies"]
    assert (never["budget"], never["gated rate"], never["gated ndcg@10"]) == (0.0, 0.0, pytest.approx(0.1))
    assert (live["budget"], live["gate tau"], live["gated rate"]) == (0.2, 0.7, 0.25)
    assert live["gated ndcg@10"] == pytest.approx((6 * 0.1 + 2 * 0.5) / 8)
    assert live["item-transition floor (cloud at budget)"] == pytest.approx(0.8 * 0.02 + 0.2 * 0.05)
    assert not any(key.startswith("random") for p in figures["policies"] for key in p)
    assert {r["list"] for r in figures["rankings"]} == {"stale", "gated"}
    assert figures["recall@k"] == {"stale": 1.0, "gated": 1.0} and figures["fresh lists"] == "gated"
    figures.update({"request signal": "confidence", "live gate signal": "confidence"})
    summary = report.write_report(tmp_path, figures, [], {"budget": 0.2, "measure": "confidence"}).read_text()
    assert "nobody asking, and the live gate" in summary and "Every request signal" not in summary
    assert (
        "of the lists served under the live gate 1.0000" in summary and "- live gate tau: 0.7000" in summary
    )
    assert all((tmp_path / name).is_file() for name in report.REPORT_FILES)
    # at budget 0 the live gate asks nobody: one row, not the same policy twice
    nothing = {**extra, "live gate tau": 1.0, "live gate realized request rate": 0.0}
    alone = report.final_figures(outcome, outcome, floors, nothing, 1.0, live_budget=0.0)
    assert [(p["budget"], p["gated rate"]) for p in alone["policies"]] == [(0.0, 0.0)]
    alone.update({"request signal": "confidence", "live gate signal": "confidence"})
    report.write_report(tmp_path / "zero", alone, [], {"budget": 0.0, "measure": "confidence"})
    assert all((tmp_path / "zero" / name).is_file() for name in report.REPORT_FILES)


@pytest.mark.parametrize(
    ("fresh", "when"), [("gated", "on the round's own sample"), ("all", "the round before")]
)
def test_the_rounds_rate_curve_says_what_its_tau_was_set_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh: str, when: str
) -> None:
    """A gated fleet's rounds gate on their own samples; an `all` fleet's on the window of the rounds before."""
    labels: list[str | None] = []
    plot = matplotlib.axes.Axes.plot

    def recording(self: matplotlib.axes.Axes, *args: object, **kwargs: object) -> object:
        labels.append(kwargs.get("label"))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recording)
    lines = [{"round": 1, records.REALIZED_RATE: 0.3}, {"round": 2, records.REALIZED_RATE: 0.2}]
    figures = {"fresh lists": fresh, "live gate realized request rate": 0.25}
    report._plot_rounds(tmp_path / "rounds.png", lines, figures, 0.2)
    assert f"sampled nodes, τ set {when}" in labels
