"""The run report: ``metrics.jsonl`` per round, ``final.json``, ``summary.md`` and PNG plots.

Every figure not labelled validation (``valid``) is on the test target, with the fusion weight α chosen on
validation. Request thresholds are calibrated on the histogram of the request signal over the test-time lists:
no signal reads a label (each compares rankings or reads the SRM's own scores), so this is what the fleet does
live, and the realized rate then meets the budget.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from lsc4rec import records
from lsc4rec.config import FederationConfig
from lsc4rec.errors import DataFormatError
from lsc4rec.outcomes import (
    LLM_ONLY,
    SRM_ONLY,
    StageOutcome,
    budget_point,
    choice_budgets,
    choose_measure,
    paired_se,
    random_policy,
    signal_comparison,
)
from lsc4rec.runs import json_line, write_json

BUDGETS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0)
ROUNDS_FILE = "metrics.jsonl"  # one JSON line per round, appended as each round ends
# per round and in final.json: users by bin of each request signal over the test-time lists, {signal: [bins]}
SIGNAL_HISTOGRAMS = "test-signal-histograms"
# the final evaluation's fleet sums and what else the report is computed from (server.report.refigure)
FINAL_SUMS_FILE = "final-sums.json"

# the list a run of federation.fresh_lists = gated serves: the fresh one where the live gate asked, else the stale
GATED_LIST = "gated"
# the two queries of lsc4rec.floors.reference_floors, as the report names them
FLOOR_VIEWS = {"stale": "cloud view", "fresh": "device view"}


def floor_column(floor: str, query: str) -> str:
    """The report's column for ``floor`` (a name of ``reference_floors``) queried with ``query``'s view."""
    return f"{floor} floor ({FLOOR_VIEWS[query]})"


def append_round(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one round's figures to ``metrics.jsonl``, first cutting off a line a crash left unfinished.

    That line's round had no checkpoint yet (:func:`read_rounds`), so the resumed run is redoing it; kept, it
    would stand in the middle of the file, where an unreadable line is an error.
    """
    path = run_dir / ROUNDS_FILE
    if path.exists() and path.stat().st_size:
        with path.open("rb+") as handle:
            handle.seek(-1, 2)
            if handle.read() != b"\n":
                handle.seek(0)
                kept = handle.read().rfind(b"\n") + 1
                handle.truncate(kept)
    with path.open("a") as handle:
        handle.write(json_line(record) + "\n")  # a NaN loss as null: strict JSON readers take every line


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """The per-round lines of ``run_dir``, one per round.

    A round redone after a crash (resumed before that round's checkpoint was written) keeps its last line. A
    line cut short by a crash while it was written (no newline after it) is skipped: its round had no
    checkpoint yet, since a round's line is written before its checkpoint, so a resumed run redoes that round.
    Any other line that is not a round's JSON is an error naming the file and the line.
    """
    path = run_dir / ROUNDS_FILE
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    rounds: dict[int, dict[str, Any]] = {}
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            rounds[int(record["round"])] = record
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines) and not text.endswith("\n"):
                continue  # torn by a crash
            raise DataFormatError(
                path,
                f"is not a round's figures ({exc!r}). Remove that line (a resumed run redoes any round "
                "that has no checkpoint).",
                line=number,
            ) from None
    return [rounds[number] for number in sorted(rounds)]


FINAL_FILE = "final.json"
_FINISHED = "Pass the folder of a run that finished, or finish it: ./run_federation.sh --resume RUN."


def read_final(
    run_dir: Path, needed: tuple[str, ...] = ("protocol", "rankings", "policies"), curves: bool = True
) -> dict[str, Any]:
    """A finished run's ``final.json``, or a ``DataFormatError`` naming it when it is not one holding ``needed``.

    The benchmark scripts re-read run folders a user names; a damaged or foreign file is one line, before any
    evaluation starts. With ``curves`` the run must have compared every request policy, which a run that
    fetched the live gate's fresh lists only (``federation.fresh_lists = gated``) did not.
    """
    path = run_dir / FINAL_FILE
    try:
        final = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataFormatError(path, f"cannot be read as a run's report ({exc}). {_FINISHED}") from None
    missing = [key for key in needed if key not in final] if isinstance(final, dict) else list(needed)
    if missing:
        raise DataFormatError(path, f"is not a finished run's report (no {', '.join(missing)}). {_FINISHED}")
    if curves and _gated(final):
        raise DataFormatError(
            path,
            "is the report of a run with federation.fresh_lists = gated: it holds the live gate's policy only, "
            "not the request policies at every budget this reads. Pass a run made with fresh_lists = all.",
        )
    return final


def alpha_rule(fed: FederationConfig) -> str:
    """How the report's α was chosen, for its protocol line (no commas: the line is comma-separated)."""
    if fed.alpha_margin_se == 0:
        return "validation's best"
    return f"validation's best unless within {fed.alpha_margin_se:g} paired se of the better single model"


def report_figures(
    sums: Mapping[str, Any],
    fed: FederationConfig,
    floors: dict[str, dict[str, dict[str, float]]],
    extra: dict[str, Any],
    live_measure: str,
) -> dict[str, Any]:
    """The report's figures from the final evaluation's fleet sums: every choice made on validation by ``fed``.

    The request signal and α are chosen here, not on the devices, so a finished run's report can be computed
    again from its saved sums (:func:`refigure`) under another rule for α without asking a device again.
    ``live_measure`` is the signal the fleet's live gate served with (chosen in the rounds).
    """
    valid, test = (
        {m: StageOutcome.from_metrics(sums, records.outcome_prefix(stage, m)) for m in fed.measures}
        for stage in ("valid", "test")
    )
    measure = choose_measure(valid, fed.budget, fed.alpha_margin_se)  # on validation, as α
    live_budget = fed.budget if fed.fresh_lists == "gated" else None
    figures = final_figures(valid[measure], test[measure], floors, extra, fed.alpha_margin_se, live_budget)
    if live_budget is None:
        figures["signals"] = signal_comparison(
            valid, test, fed.alpha_margin_se, sorted({*choice_budgets(fed.budget), 0.05, 0.1, 0.2})
        )
    figures["request signal"] = measure
    figures["live gate signal"] = live_measure
    figures[SIGNAL_HISTOGRAMS] = {m: test[m].bin_count.tolist() for m in fed.measures}
    return figures


def save_final_sums(
    run_dir: Path,
    sums: Mapping[str, Any],
    floors: dict[str, dict[str, dict[str, float]]],
    extra: dict[str, Any],
    live_measure: str,
    protocol: dict[str, Any],
) -> None:
    """Keep what :func:`report_figures` reads, and the protocol, so that :func:`refigure` can compute it again."""
    saved = {"sums": dict(sums), "floors": floors, "extra": extra, "live_measure": live_measure}
    write_json(run_dir / FINAL_SUMS_FILE, {**saved, "protocol": protocol}, atomic=True)


def refigure(run_dir: Path, fed: FederationConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """A finished run's report figures and protocol computed again from its saved sums, under ``fed``'s rules.

    With the run's own settings they are its ``final.json``'s; with another ``federation.alpha_margin_se`` they
    show what that rule would have served. A ``DataFormatError`` for a run from before 2026-12-07, which saved
    no sums.
    """
    path = run_dir / FINAL_SUMS_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        sums, floors, extra, live = (saved[k] for k in ("sums", "floors", "extra", "live_measure"))
        return report_figures(sums, fed, floors, extra, live), {
            **saved["protocol"],
            "α choice": alpha_rule(fed),
        }
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:  # a damaged file, or another run's
        raise DataFormatError(
            path, f"cannot be read as a run's final sums ({exc!r}). Runs before 2026-12-07 saved none."
        ) from None


def final_figures(
    valid: StageOutcome,
    test: StageOutcome,
    floors: dict[str, dict[str, dict[str, float]]],
    extra: dict[str, float],
    margin_se: float,
    live_budget: float | None = None,
) -> dict[str, Any]:
    """The report's numbers: rankings at the validation-chosen α and every request policy at each budget.

    α is validation's best held to ``margin_se`` paired standard errors over the better single model
    (:meth:`StageOutcome.chosen_alpha`).

    With ``live_budget`` (a run of ``federation.fresh_lists = gated``) only the live gate's users fetched a
    fresh list, so ``test``'s fresh sums are the lists the fleet served under its gate (list ``gated``), and
    the policies are what such a run can show: nobody asking, and the live gate at that budget, whose τ and
    rate are ``extra``'s ``live gate tau`` and ``live gate realized request rate`` (the server's figures).
    """
    best = valid.chosen_alpha(margin_se)
    means = test.means()
    alphas = list(test.alphas)

    # every row beside both queries of each floor: the LLM's stale list reads the cloud view, while the SRM
    # (SRM-only, fused) reads the device view, which the device holds without asking the cloud
    both_views = {
        floor_column(floor, query): v[query]["ndcg@10"]
        for floor, v in floors.items()
        for query in FLOOR_VIEWS
    }

    def row(name: str, lst: str, sums: str, index: int) -> dict[str, Any]:
        return {
            "ranking": name,
            "list": lst,
            "alpha": alphas[index],
            "ndcg@10": float(means[f"{sums}-ndcg"][index]),
            "hr@10": float(means[f"{sums}-hr"][index]),
            **both_views,
        }

    def floor_at(budget: float) -> dict[str, float]:
        """A floor served by the cloud, refreshed by random requests at ``budget``; then on the device."""
        return {
            **{
                f"{floor} floor (cloud at budget)": (1 - budget) * v["stale"]["ndcg@10"]
                + budget * v["fresh"]["ndcg@10"]
                for floor, v in floors.items()
            },
            **{floor_column(floor, "fresh"): v["fresh"]["ndcg@10"] for floor, v in floors.items()},
        }

    asked = "fresh" if live_budget is None else GATED_LIST
    rows = []
    for lst, sums in (("stale", "stale"), (asked, "fresh")):
        rows += [
            row("LLM-only", lst, sums, LLM_ONLY),
            row("SRM-only", lst, sums, SRM_ONLY),
            row("fused", lst, sums, best),
        ]
    policies = []
    if live_budget is not None:
        gates = [(0.0, 1.0, 0.0, "stale")]  # nobody asking
        if live_budget > 0:  # a live gate at budget 0 is the row above
            gates.append(
                (live_budget, extra["live gate tau"], extra["live gate realized request rate"], "fresh")
            )
        for budget, tau, rate, lst in gates:
            policies.append(
                {
                    "budget": budget,
                    "gate tau": tau,
                    "gated rate": rate,
                    "gated ndcg@10": float(means[f"{lst}-ndcg"][best]),
                    **floor_at(budget),
                }
            )
    else:
        for budget in BUDGETS:
            point = budget_point(test, best, budget)
            policies.append(
                {
                    "budget": budget,
                    "random ndcg@10": random_policy(test, best, budget),
                    "gate tau": point.tau,
                    "gated rate": point.rate,
                    "gated ndcg@10": point.gated,
                    "random ndcg@10 at gated rate": point.random,
                    # what random requests spread by at that rate: gated - random is evidence only well beyond it
                    "random sd at gated rate": point.spread,
                    **floor_at(budget),
                }
            )
    return {
        "fresh lists": "all" if live_budget is None else GATED_LIST,
        "alpha": alphas[best],
        "alphas": alphas,
        "users": test.users,
        "recall@k": {"stale": test.stale_recall / test.users, asked: test.fresh_recall / test.users},
        "valid": {"fused ndcg@10": float(valid.means()["stale-ndcg"][best]), **_validation_lead(valid)},
        # the whole α curve of the stale list, to see how flat the choice was (α is picked on validation only)
        "fused ndcg@10 by alpha": {
            "valid": valid.means()["stale-ndcg"].tolist(),
            "test": means["stale-ndcg"].tolist(),
        },
        "rankings": rows,
        # check 1's margins, each with its paired standard error
        "fused margins": {
            name: {
                "ndcg@10": float(means["stale-ndcg"][best] - means["stale-ndcg"][end]),
                "paired se": paired_se(test, best, end),
            }
            for name, end in (("over SRM-only", SRM_ONLY), ("over LLM-only", LLM_ONLY))
        },
        "policies": policies,
        "floors": floors,
        **extra,
    }


SUMMARY_FILE = "summary.md"
ROUNDS_PLOT = "validation_per_round.png"
POLICIES_PLOT = "ndcg_vs_request_rate.png"
REPORT_FILES = (FINAL_FILE, SUMMARY_FILE, ROUNDS_PLOT, POLICIES_PLOT)  # what write_report writes


def write_report(
    run_dir: Path, figures: dict[str, Any], rounds: list[dict[str, Any]], protocol: dict[str, Any]
) -> Path:
    """Write ``final.json``, ``summary.md`` and the plots; return the summary's path."""
    write_json(run_dir / FINAL_FILE, {"protocol": protocol, **figures})
    _plot_rounds(run_dir / ROUNDS_PLOT, rounds, figures, protocol["budget"])
    _plot_policies(run_dir / POLICIES_PLOT, figures)
    summary = run_dir / SUMMARY_FILE
    summary.write_text(summary_markdown(figures, protocol))
    return summary


def set_aside_report(run_dir: Path, server_round: int) -> Path | None:
    """Move the report of a run that stood at ``server_round`` into ``report-round-NNNN/``; its folder, or None.

    Called before a finished run is extended by more rounds: left in place until the new report replaced it, the
    old one would sit, after a crash on the way, beside the newer rounds' checkpoints and metrics as if it
    described them.
    """
    found = [run_dir / name for name in (*REPORT_FILES, FINAL_SUMS_FILE) if (run_dir / name).exists()]
    if not found:
        return None
    folder = run_dir / f"report-round-{server_round:04d}"
    folder.mkdir(exist_ok=True)
    for path in found:
        path.replace(folder / path.name)
    return folder


def _plain(value: Any) -> str:
    """``value`` as Markdown shows it letter for letter: a dataset path such as ``/data/_x_/`` is no emphasis."""
    return re.sub(r"([\\`*_\[\]<>])", r"\\\1", str(value))


def summary_markdown(figures: dict[str, Any], protocol: dict[str, Any]) -> str:
    """The headline tables as Markdown (also printed by run_federation.sh)."""
    lines = [
        "# LSC4Rec federation: results",
        "",
        "Protocol: " + ", ".join(f"{k} {_plain(v)}" for k, v in resolved_protocol(protocol, figures).items()),
        "",
        f"Fusion weight α = {figures['alpha']:.2f} (chosen on validation{_held_alpha(figures)}). "
        f"Users: {figures['users']}"
        f"{_missing_users(figures)}. "
        f"Recall@K of the stale list {figures['recall@k']['stale']:.4f}, {_second_recall(figures)} "
        f"(the ceiling of any reranking).{_fallback_note(figures)}",
        "",
        "## Rankings (test, over the candidate list; the floors rank the full catalogue, fitted on the training "
        "sequences, from the cloud view, ℓ items behind, which the LLM's stale list is made from, and from the "
        "device view, which the SRM reads in every row; the cloud-view floor leaves out the cloud view's items, as "
        "the LLM does, while every served list also drops the ℓ newer ones the device holds)",
        "",
    ]
    lines += _markdown_table(figures["rankings"])
    lines += _margins(figures)
    if _gated(figures):
        return "\n".join(lines + _live_gate_only(figures)) + "\n"
    lines += [
        "",
        "## Request policies (test, fused at α; random is the expectation, gated uses the τ "
        "calibrated on the label-free histogram of the request signal; a floor served by the cloud, refreshed "
        "by random requests at the budget, and the floor run on the device from its own view)",
        "",
        f"Request signal: {figures['request signal']} (with `federation.measure = auto`, "
        "the one whose gate beat random requests by most on validation, summed over the budget, its double and "
        "its quadruple). The live gate (the final evaluation's, its signal chosen during the rounds) "
        f"used {figures['live gate signal']}{_live_gate_basis(figures)}. "
        "`random sd at gated rate` is how much "
        "random requests at that rate spread: a gate that knows nothing beats random by more than one sd about "
        "one time in six, so gated minus random is evidence only well beyond it. The chosen signal's validation "
        "gain is the best of several, so it is biased upwards: its test gain is the check.",
        "",
    ]
    lines += _markdown_table(figures["policies"])
    columns = ("signal", "budget", "valid gain", "valid random sd", "test gain", "test random sd")
    lines += [
        "",
        "## Every request signal: gated minus random NDCG@10 (validation chooses; test is shown, never used)",
        "",
    ]
    lines += _markdown_table([{c: row[c] for c in columns} for row in figures["signals"]])
    return "\n".join(lines + _other_figures(figures)) + "\n"


def _live_gate_only(figures: dict[str, Any]) -> list[str]:
    """The policies of a run that fetched the live gate's fresh lists only, and its other figures."""
    lines = [
        "",
        "## Request policies (test, fused at α): nobody asking, and the live gate (beside them a floor served by "
        "the cloud, refreshed by random requests at the budget, and the floor run on the device from its own view)",
        "",
        "This run fetched a fresh list only for the users its live gate sent (`federation.fresh_lists = gated`), "
        f"by {figures['live gate signal']}{_live_gate_basis(figures)}. The `gated` rows above rank what the fleet "
        "served: the fresh list where the gate asked, the stale one elsewhere. Random requests and the other "
        "budgets need every user's fresh list: a run with `fresh_lists = all` compares them.",
        "",
    ]
    return lines + _markdown_table(figures["policies"]) + _other_figures(figures)


def _other_figures(figures: dict[str, Any]) -> list[str]:
    """The report's single figures (counts, the SRM over the catalogue, the live gate), one line each."""
    extra = {k: v for k, v in figures.items() if isinstance(v, int | float) and k not in ("alpha", "users")}
    if not extra:
        return []
    heading = (
        "## Other figures (the federated SRM's full-catalogue figures compare with the device-view floors)"
    )
    return ["", heading, ""] + [f"- {k}: {_cell(v)}" for k, v in extra.items()]


def _second_recall(figures: dict[str, Any]) -> str:
    """The recall@K of the fresh lists, or in a gated run of the lists the fleet served."""
    recall = figures["recall@k"]
    if _gated(figures):
        return f"of the lists served under the live gate {recall[GATED_LIST]:.4f}"
    return f"of the fresh list {recall['fresh']:.4f}"


def _gated(figures: dict[str, Any]) -> bool:
    """Whether the report is a gated run's (``federation.fresh_lists``); reports before the setting are not."""
    return figures.get("fresh lists") == GATED_LIST


def resolved_protocol(protocol: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    """The protocol as configured, with the request signal ``auto`` resolved to validation's choice.

    Reports written before the choice was recorded keep ``auto``.
    """
    if protocol.get("measure") != "auto" or "request signal" not in figures:
        return protocol
    return {**protocol, "measure": f"auto (validation chose {figures['request signal']})"}


def _margins(figures: dict[str, Any]) -> list[str]:
    """Fused minus SRM-only and LLM-only on the stale list, with paired standard errors; none in old reports."""
    margins = figures.get("fused margins")
    if not margins:
        return []
    itself = {0.0: "over SRM-only", 1.0: "over LLM-only"}.get(figures["alpha"])  # fused is that model
    said = "; ".join(
        f"{name} {m['ndcg@10']:+.4f} (paired se {m['paired se']:.4f})"
        for name, m in margins.items()
        if name != itself
    )
    alone = f" (at α = {figures['alpha']:.0f} fused is {itself.removeprefix('over ')})" if itself else ""
    return [
        "",
        f"Fused NDCG@10 on the stale list{alone}, {said}: a margin within about two standard errors of 0 is not "
        "evidence either way.",
    ]


def _fallback_note(figures: dict[str, Any]) -> str:
    """What the rows hold where the cloud failed in the final evaluation; "" when it never did."""
    lists = figures.get("cloud fallbacks (final evaluation)", 0)
    if not lists:
        return ""
    return (
        f" The cloud did not deliver {lists} lists in the final evaluation: a missing stale list is the SRM's own "
        "top-K, in the SRM's order in every row (LLM-only included), and a missing fresh list is the stale one."
    )


def _validation_lead(valid: StageOutcome) -> dict[str, float]:
    """What the α margin decided on: validation's best α and its lead over the better single model."""
    best, single, lead, se = valid.best_lead()
    alphas = valid.alphas
    return {
        "best alpha": alphas[best],
        "better single alpha": alphas[single],
        "best lead": lead,
        "lead paired se": se,
    }


def _held_alpha(figures: dict[str, Any]) -> str:
    """A note when validation's best α was a blend held back by the margin; "" when the best α is served."""
    best = figures["valid"]["best alpha"]
    if best == figures["alpha"]:
        return ""
    single = "SRM-only" if figures["alpha"] == 0 else "LLM-only"
    return f"; its best blend, α = {best:.2f}, beat {single} by no more than the margin the protocol names"


def _missing_users(figures: dict[str, Any]) -> str:
    """A note when some users' nodes did not answer the final evaluation; "" when none."""
    missing = figures["users missing from the final evaluation"]
    if not missing:
        return ""
    same = figures.get("users the floors cover") == figures["users"]
    return (
        f" ({missing} more are missing: their nodes did not answer; the floors cover "
        f"{'the same users' if same else 'every user'})"
    )


def _live_gate_basis(figures: dict[str, Any]) -> str:
    """How the live gate's τ was set, and where its realized rate is; "" when no node answered its pass."""
    users = figures["live gate tau calibrated on users"]
    if not users:
        return ""
    beside = (
        ", beside the τ of the last round and the rate that τ would have had"
        if "tau of the last round" in figures  # an `all` run's: a gated run's rounds gated on their samples
        else ""
    )
    return (
        f", with τ calibrated on the {users} users' label-free signals under the final model, in a pass before "
        f"the evaluation; its realized rate is under Other figures{beside}"
    )


def _cell(value: Any) -> str:
    """Floats to four decimals (from 1e-6 to 0.001 to two significant digits, fixed point); counts as they are.

    The spread of random requests is about 0.0002 on MovieLens: at four decimals 0.00017 read 0.0002, and the
    summary asks that gains be read against it.
    """
    if not isinstance(value, float):
        return str(value)
    if not 1e-6 <= abs(value) < 0.001:  # what is smaller still reads as 0.0000
        return f"{value:.4f}"
    return f"{value:.{1 - math.floor(math.log10(abs(value)))}f}"  # fixed point, never 9e-05


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """A Markdown table of ``rows``, figures right-aligned (``---:``) so that their decimals line up."""
    columns = list(rows[0])
    numeric = [all(isinstance(r[c], int | float) for r in rows) for c in columns]
    return ["| " + " | ".join(columns) + " |", "|" + "".join("---:|" if n else "---|" for n in numeric)] + [
        "| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows
    ]


def _plot_rounds(path: Path, rounds: list[dict[str, Any]], figures: dict[str, Any], budget: float) -> None:
    """Validation NDCG@10 per round, and beside it the live gate's request rate per round against the budget."""
    points = [(r["round"], r["valid-fused-ndcg@10"]) for r in rounds if "valid-fused-ndcg@10" in r]
    rates = [(r["round"], r[records.REALIZED_RATE]) for r in rounds if records.REALIZED_RATE in r]
    fig, (ax, gate) = plt.subplots(1, 2, figsize=(11, 4.8))
    if points:
        ax.plot(*zip(*points, strict=True), marker="o")
    ax.set(
        xlabel="round",
        ylabel="validation NDCG@10",
        title="Validation per round\n(fused at its best α, sampled nodes)",
    )
    ax.grid(alpha=0.3)
    if rates:
        when = "on the round's own sample" if _gated(figures) else "the round before"
        gate.plot(*zip(*rates, strict=True), marker="o", label=f"sampled nodes, τ set {when}")
    last = max((r["round"] for r in rounds), default=0)
    gate.plot(  # at the last round: the final evaluation serves its model, with no round of its own
        [last],
        [figures["live gate realized request rate"]],
        marker="*",
        markersize=12,
        linestyle="none",
        label=f"final evaluation after round {last}, τ from the final model",
    )
    gate.axhline(budget, color="grey", linestyle="--", label=f"budget {budget:g}")
    gate.set(xlabel="round", ylabel="share of users requesting", title="The live gate's request rate")
    gate.grid(alpha=0.3)
    for axes in (ax, gate):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # rounds, never 1.2
        axes.set_xlim(0.5, max(last, 1) + 0.5)  # with one round, the locator alone finds no whole number
    # under the plot, where it hides no point
    gate.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_policies(path: Path, figures: dict[str, Any]) -> None:
    """NDCG@10 against the request rate: gated, and random with its spread where the run measured it."""
    policies = figures["policies"]
    fig, ax = plt.subplots(figsize=(6, 4))
    rates = [p["gated rate"] for p in policies]
    measured = not _gated(figures)  # a run that fetched the live gate's fresh lists only has no random curve
    if measured:
        ax.plot(
            [p["budget"] for p in policies],
            [p["random ndcg@10"] for p in policies],
            marker="o",
            label="random",
        )
    ax.plot(rates, [p["gated ndcg@10"] for p in policies], marker="s", label="gated")
    if measured:
        mid = np.array([p["random ndcg@10 at gated rate"] for p in policies])
        sd = np.array([p["random sd at gated rate"] for p in policies])
        ax.fill_between(rates, mid - sd, mid + sd, alpha=0.2, label="random ± 1 sd")
    # the stronger floor only: most-popular's, far below, would squash the gap between gated and random
    level = figures["floors"]["item-transition"]["fresh"]["ndcg@10"]
    ax.axhline(
        level, color="grey", linestyle="--", label="item-transition floor (device view, full catalogue)"
    )
    ax.set(
        xlabel="realized request rate",
        ylabel="test NDCG@10 (fused at α, over the list)",
        title=f"NDCG@10 against request rate, gated by {figures['request signal']}",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
