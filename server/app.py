"""The Flower ServerApp: read the run config once, run the rounds, checkpoint, evaluate every node, report.

Strategy: Flower's FedAvg (or FedProx / FedAdam / FedAvgM), wrapped by central differential privacy when
``federation.dp_noise`` > 0, the item-weighted embedding rows when ``federation.item_weighted``, the update guard
(non-finite and oversized updates are rejected and counted) and the request budget (the fleet's request signal
and threshold τ for cloud requests). The nodes report sums, so evaluation metrics are added up, not averaged
(``strategies.sums``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from logging import INFO, WARNING
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedProx, Strategy

from clients.srm import ITEM_ROWS, build_srm
from lsc4rec import records
from lsc4rec.config import MEASURES, FederationConfig, RunConfig
from lsc4rec.data.partition import fleet_size, partition_users
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.data.split import TemporalSplit
from lsc4rec.errors import LSC4RecError
from lsc4rec.floors import reference_floors
from lsc4rec.outcomes import (
    LLM_ONLY,
    SRM_ONLY,
    StageOutcome,
    expected_rate,
    signal_bin_edges,
    threshold_for_budget,
)
from lsc4rec.runs import new_federation_dir, seed_everything
from server.checkpoint import (
    DAMAGED,
    NOISELESS,
    Checkpoint,
    latest_checkpoint,
    ledger_path,
    read_ledger,
    save_checkpoint,
    save_ledger,
)
from server.fleet import PartitionOrderedGrid, sampler_state, seeded_node_sampling, wait_for_nodes
from server.report import (
    FINAL_SUMS_FILE,
    ROUNDS_FILE,
    SIGNAL_HISTOGRAMS,
    alpha_rule,
    append_round,
    read_rounds,
    report_figures,
    save_final_sums,
    set_aside_report,
    write_report,
)
from strategies import ItemWeighting, RequestBudget, UpdateGuard
from strategies.budget import SampleCounts
from strategies.guards import EMPTY_UPDATES, FAILED, REASONS
from strategies.privacy import FleetPrivacy
from strategies.sums import MetricSums, sum_metrics, train_metrics
from strategies.wrapper import StrategyWrapper

app = ServerApp()

DP_EPSILON = "dp-epsilon"  # metrics.jsonl: ε spent after the round (federation.dp_noise > 0)
# The final gate's histogram: fine, so that τ's own bin, whose users request by coin flip, holds a user or two.
FINAL_GATE_BINS = 1000
DP_EPSILON_FIGURE = "DP epsilon at delta {delta:g} (global SRM, per node)"  # final.json: ε of the whole run
# a checkpoint's server state (Checkpoint.server): the node sampler, the request budget's window, the seconds spent
SAMPLER, BUDGET_WINDOW, SECONDS = "node-sampler", "request-budget-window", "federation-seconds"
# the final questions (about a minute and a half together on the default run's 610 nodes) log every tenth of
# the replies from a fleet of at least this many nodes
PROGRESS_NODES = 20
# how long a round waits for the nodes that joined to tell their partitions (a box that misses it is then listed
# as one of its own): a query the ClientApp answers from its node config, while the round's fleet waits on it
ROUND_QUERY_TIMEOUT_S = 120.0
# how long the server waits for the replies to a round's messages or to a final question
REPLY_TIMEOUT_S = 3600.0
# the label-free question that calibrates a gate: a node's histogram of a request signal under a model
SIGNALS = f"{MessageType.QUERY}.{records.SIGNALS_ACTION}"


class _ShortLines(logging.Filter):
    """Keep the log readable: metrics.jsonl and final.json hold every figure.

    Flower logs whole MetricRecords (histograms of hundreds of numbers) every round, and at the end the whole
    history of them, one line of a pretty-printed dict per log record (tens of thousands of lines). A node's
    error and every warning are kept whatever their length: on edge boxes they are the operator's only view of
    why a box fails (a wrong CA's message alone runs past 300 characters). A simulation's worker logs each
    failed message twice, its error, then its traceback as text: the traceback goes (hundreds a round when a
    whole fleet is misconfigured), the error stays.
    """

    _DICT_LINE = re.compile(r"\t\s*(\{|'|\"|\d+: \{)")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Traceback (most recent call last)"):
            return False
        if record.levelno >= logging.WARNING or "error in reply from node" in message:
            return True
        return len(message) <= 300 and not self._DICT_LINE.match(message)


def _sum_and_report(replies: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Sum the nodes' evaluation sums (``strategies.sums``) and log the round's validation figure in one line."""
    metrics = sum_metrics(replies, weighted_by_key)
    if (valid := _any_outcome(metrics, "valid")) is not None:
        best = valid.best_alpha()
        log(
            INFO,
            "validation on %d sampled users: fused NDCG@10 %.4f (its best α %.1f), LLM-only %.4f, SRM-only %.4f",
            valid.users,
            valid.means()["stale-ndcg"][best],
            valid.alphas[best],
            valid.means()["stale-ndcg"][LLM_ONLY],
            valid.means()["stale-ndcg"][SRM_ONLY],
        )
    return metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by ``context.run_config`` and write its report."""
    cfg = RunConfig.from_flat(context.run_config)
    fed = cfg.federation
    logging.getLogger("flwr").addFilter(_ShortLines())
    run_dir = Path(fed.run_dir) if fed.run_dir else new_federation_dir(cfg.out_dir, cfg.data.dataset)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    seed_everything(cfg.seed)
    split = TemporalSplit(load_or_prepare(cfg.data, cfg.seed), cfg.data.lag)
    nodes = fleet_size(fed.num_nodes, split.num_users)
    wait_for_nodes(grid, nodes)
    # checked partitions, in order: seeded node samples name the same users on every run
    grid = PartitionOrderedGrid.discover(grid, nodes, split.num_users)
    start = _starting_point(cfg, run_dir, split.dataset.num_items)
    start_round, arrays, resumed = start.round, start.arrays, start.server or {}
    aggregator = flower_strategy(cfg)
    privacy = _privacy(aggregator, fed, nodes, start, run_dir)
    strategy = RequestBudget(
        _guarded(privacy or aggregator, fed),
        fed.budget,
        fed.bins,
        fed.measures,
        initial_tau=start.tau,  # a resumed run keeps its gate
        initial_measure=start.measure if start.measure in fed.measures else None,
        window=fed.budget_window,
        initial_window=resumed.get(BUDGET_WINDOW, ()),
        sample_counts=_sample_signal_counts(grid, fed) if fed.fresh_lists == "gated" else None,
        margin_se=fed.alpha_margin_se,
    )
    started = time.perf_counter() - float(resumed.get(SECONDS, 0.0))  # the rounds before a resume count too
    if start_round == 0:  # a fresh run in a used folder: the earlier run's lines do not describe this one
        (run_dir / ROUNDS_FILE).unlink(missing_ok=True)
        ledger_path(run_dir).unlink(missing_ok=True)
        # nor its sums: computed again under this run's config.json, they would pass for this run's report
        (run_dir / FINAL_SUMS_FILE).unlink(missing_ok=True)
    if fed.rounds > start_round:
        if start_round > 0 and (aside := set_aside_report(run_dir, start_round)) is not None:
            log(
                INFO,
                "the report of round %d moved to %s: it does not describe the rounds to come",
                start_round,
                aside,
            )
        recorded = _RoundMetrics(strategy, grid, start_round)
        # a checkpoint older than the sampler's saved state: a draw of its own, not round 1's sample again
        with seeded_node_sampling(cfg.seed + start_round, resumed.get(SAMPLER)) as sampler:

            def server_state() -> dict[str, Any]:
                return {
                    SAMPLER: sampler_state(sampler),
                    BUDGET_WINDOW: strategy.window_state(),
                    SECONDS: time.perf_counter() - started,
                }

            result = recorded.start(
                grid,
                arrays,
                num_rounds=fed.rounds - start_round,
                timeout=REPLY_TIMEOUT_S,
                evaluate_fn=_after_round(run_dir, recorded, strategy, privacy, server_state),
            )
        if len(result.arrays):  # Flower leaves it empty when no round had a single update to aggregate
            arrays = result.arrays
        else:
            log(WARNING, "no round aggregated an update; the final evaluation uses the starting model")
    summary = _final_report(grid, arrays, cfg, split, nodes, strategy, privacy, run_dir, started)
    log(INFO, "report written: %s", summary)


def _final_report(
    grid: PartitionOrderedGrid,
    arrays: ArrayRecord,
    cfg: RunConfig,
    split: TemporalSplit,
    nodes: int,
    strategy: RequestBudget,
    privacy: FleetPrivacy | None,
    run_dir: Path,
    started: float,
) -> Path:
    """The final evaluation of ``arrays`` over every node, under a gate calibrated afresh, and the run report.

    The request signal is chosen on validation, as α is; the floors cover the users the final evaluation
    reached. Returns ``summary.md``.
    """
    fed = cfg.federation
    gate = _final_gate(grid, arrays, strategy.measure, fed, nodes)
    final, answered = _final_evaluation(grid, arrays, gate.tau, strategy.measure, fed.rounds, nodes)
    # the live signal's test outcome: its users (every signal's outcome sums the same) and its histogram
    live = StageOutcome.from_metrics(final, records.outcome_prefix("test", strategy.measure))
    evaluated = live.users
    users = max(evaluated, 1)
    reported = _reported_users(grid, answered, nodes, cfg.seed, split.num_users, evaluated)
    rounds = read_rounds(run_dir)  # every round's line, those before a resume too
    extra = {
        "federated SRM full-catalogue ndcg@10 (global)": final[records.GLOBAL_NDCG] / users,
        "federated SRM full-catalogue ndcg@10 (personal)": final[records.PERSONAL_NDCG] / users,
        # the gate the fleet serves with ("live gate signal", from training); the policies use the signal below
        "live gate tau": gate.tau,
        "live gate realized request rate": final[records.REQUESTS] / users,
        "live gate tau calibrated on users": gate.users,
        # what the rounds' window calibrated, for comparison (a gated fleet's rounds gate on their samples)
        **(
            {}
            if fed.fresh_lists == "gated"
            else {
                "tau of the last round": strategy.tau,
                "expected rate of the last round's tau": expected_rate(
                    live.bin_count, live.bin_edges, strategy.tau
                ),
            }
        ),
        "cloud fallbacks (gate calibration)": gate.fallbacks,
        "cloud fallbacks (final evaluation)": int(final[records.FALLBACKS]),
        # from the rounds' lines, which a resumed run keeps: the guard counts only the rounds it ran itself
        "rejected updates": sum(int(r.get(f"train-{reason}", 0)) for r in rounds for reason in REASONS),
        "updates with no training example": sum(int(r.get(f"train-{EMPTY_UPDATES}", 0)) for r in rounds),
        "failed training replies": sum(int(r.get(f"train-{FAILED}", 0)) for r in rounds),
        # the users the live gate sent in the rounds' samples (an `all` fleet only counts them: all fetched)
        "requests in the rounds": sum(int(r.get(records.REQUESTS, 0)) for r in rounds),
        # device views sent to the cloud for a fresh list (one sent once, the node serves the list it holds)
        "fresh views sent in the rounds": sum(int(r.get(records.FRESH_SENT, 0)) for r in rounds),
        "fresh views sent in the final evaluation": int(final[records.FRESH_SENT]),
        "users missing from the final evaluation": split.num_users - evaluated,
        "federation seconds": time.perf_counter() - started,
    }
    if privacy is not None:
        extra[DP_EPSILON_FIGURE.format(delta=fed.dp_delta)] = privacy.epsilon
        extra["DP noised rounds"] = privacy.releases
    extra["users the floors cover"] = split.num_users if reported is None else len(reported)
    floors = reference_floors(split, cfg.srm.max_len, reported)
    protocol = _protocol(cfg, nodes)
    save_final_sums(run_dir, final, floors, extra, strategy.measure, protocol)
    figures = report_figures(final, fed, floors, extra, strategy.measure)
    return write_report(run_dir, figures, rounds, protocol)


def _starting_point(cfg: RunConfig, run_dir: Path, num_items: int) -> Checkpoint:
    """The newest checkpoint when resuming, else round 0: a fresh SRM, τ 1 (no requests), no gate signal."""
    model = build_srm(cfg.srm, num_items)
    if cfg.federation.resume and (found := latest_checkpoint(run_dir)) is not None:
        log(INFO, "resuming from round %d of %s", found.round, run_dir)
        # in the model's order, as the nodes reply (a file lists them by name): FedAvgM pairs them by position
        return found._replace(arrays=ArrayRecord({key: found.arrays[key] for key in model.state_dict()}))
    return Checkpoint(0, ArrayRecord(model.state_dict()), 1.0)


def _privacy(
    aggregator: Strategy, fed: FederationConfig, nodes: int, start: Checkpoint, run_dir: Path
) -> FleetPrivacy | None:
    """Central DP around ``aggregator`` when ``federation.dp_noise`` > 0, its accountant going on from ``start``.

    A resumed run's accountant is the run's ledger, written at each release, which counts a release that the
    newest checkpoint missed (a round that died after it); a run from before the ledger goes on from the
    checkpoint's. A private run cannot resume from rounds released without noise: no ε would cover them, and
    a run resumed without noise marks its ledger so, before its first release, even one it never checkpoints.
    """
    if not fed.private:
        if start.privacy is not None:
            log(
                WARNING,
                "resuming a private run without federation.dp_noise: the rounds from now on add no noise",
            )
            if fed.rounds > start.round:
                save_ledger(run_dir, {NOISELESS: True})
        return None
    ledger = read_ledger(run_dir) if start.round > 0 else None
    if start.round > 0 and (start.privacy is None or (ledger or {}).get(NOISELESS)):
        raise LSC4RecError(
            "rounds of this run were released without differential privacy, so no ε covers them. Run the "
            "private federation in a new run folder (leave out --resume)."
        )
    assert isinstance(aggregator, FedAvg)  # the config allows fedavg|fedprox only when private

    def going_on(state: dict | None) -> FleetPrivacy:
        return FleetPrivacy(
            aggregator,
            fed.dp_noise,
            fed.dp_clip,
            nodes,
            fed.dp_delta,
            state,
            on_release=lambda released: save_ledger(run_dir, released),
        )

    damaged = (
        f"{ledger_path(run_dir)} is damaged, restore it or start a new run"
        if ledger
        else f"round {start.round}'s sidecar JSON is damaged: {DAMAGED}"
    )
    try:
        privacy = going_on(ledger or start.privacy)
    except ValueError as exc:  # the accountant was for another δ or fleet, or its file is damaged
        raise LSC4RecError(
            f"cannot go on with this run's privacy accounting ({exc}). Resume it with the federation.dp_delta "
            f"and fleet it started with; if {damaged}"
        ) from None
    if ledger and start.privacy:
        # a ledger restored from an older copy: the accountant that counted more releases is the one whose ε
        # covers every model the run has released (a damaged sidecar's is no rival to a whole ledger)
        with contextlib.suppress(ValueError):
            checkpointed = going_on(start.privacy)
            if checkpointed.releases > privacy.releases:
                log(
                    WARNING,
                    "the privacy ledger counts fewer releases than round %d's checkpoint: going on from it",
                    start.round,
                )
                privacy = checkpointed
    return privacy


def flower_strategy(cfg: RunConfig) -> Strategy:
    """Flower's own strategy named by ``federation.strategy``, sampling the connected nodes, summing evaluations.

    The ServerApp waits for the whole fleet before the first round (``wait_for_nodes``). After that a round
    samples whichever nodes are connected: an edge box that goes offline must not stall the run, as Flower's
    sampler would, waiting forever for ``min_available_nodes`` to be connected again.
    """
    fed = cfg.federation
    common: dict[str, Any] = {
        "weighted_by_key": _weight_key(fed),
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": fed.fraction_evaluate,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
        "train_metrics_aggr_fn": train_metrics,
        "evaluate_metrics_aggr_fn": _sum_and_report,
    }
    if fed.strategy == "fedprox":
        return FedProx(proximal_mu=fed.proximal_mu, **common)
    if fed.strategy == "fedadam":
        return FedAdam(eta=fed.effective_server_lr, **common)
    if fed.strategy == "fedavgm":
        return FedAvgM(
            server_learning_rate=fed.effective_server_lr, server_momentum=fed.server_momentum, **common
        )
    return FedAvg(**common)


def _weight_key(fed: FederationConfig) -> str:
    """The reply metric FedAvg weights by: examples, or 1 per node for a private mean (the noise assumes it)."""
    return records.NODES if fed.private else records.NUM_EXAMPLES


def _guarded(aggregator: Strategy, fed: FederationConfig) -> UpdateGuard:
    """The update guard around ``aggregator``, with item-weighted rows in between when configured.

    A private run publishes no node's own update norm (``report_norms``).
    """
    extra: tuple[str, ...] = ()
    if fed.item_weighted:
        aggregator = ItemWeighting(
            aggregator, ITEM_ROWS, records.ITEM_COUNTS, records.ARRAYS, records.NUM_EXAMPLES
        )
        extra = (records.ITEM_COUNTS,)
    return UpdateGuard(
        aggregator,
        fed.max_update_norm or None,
        _weight_key(fed),
        extra_records=extra,
        report_norms=not fed.private,
    )


class _RoundMetrics(StrategyWrapper):
    """Number the rounds as the run does, learn the nodes that joined, and hold the round's metrics for the hook.

    Flower's ``start`` counts a resumed run's rounds from 1 again; the strategies below, and through the
    messages' ``server-round`` the nodes, which seed each round from it, get ``offset`` (the checkpoint's round)
    added. Before each sample the nodes that joined are asked their partition (a query, only when one has
    joined), so that a box that reconnected under a new id is sampled once (``PartitionOrderedGrid``) and one
    with a node config that does not fit the fleet not at all. Flower's result keeps the whole history; the hook,
    called last in each round, needs only this round's.
    """

    def __init__(self, strategy: Strategy, grid: PartitionOrderedGrid, offset: int = 0) -> None:
        super().__init__(strategy)
        self.grid = grid
        self.offset = offset
        self.train: MetricRecord | None = None
        self.evaluate: MetricRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate with the run's round number, the nodes that joined known by their partitions."""
        self.grid.learn_new_nodes(ROUND_QUERY_TIMEOUT_S)
        return self.strategy.configure_train(self.offset + server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Delegate with the run's round number, and keep the metrics."""
        arrays, self.train = self.strategy.aggregate_train(self.offset + server_round, replies)
        return arrays, self.train

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate with the run's round number, the nodes that joined known by their partitions."""
        self.grid.learn_new_nodes(ROUND_QUERY_TIMEOUT_S)
        return self.strategy.configure_evaluate(self.offset + server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Delegate with the run's round number, and keep the metrics."""
        self.evaluate = self.strategy.aggregate_evaluate(self.offset + server_round, replies)
        return self.evaluate


def _after_round(
    run_dir: Path,
    recorded: _RoundMetrics,
    budget: RequestBudget,
    privacy: FleetPrivacy | None,
    server_state: Callable[[], dict[str, Any]],
) -> Callable[[int, ArrayRecord], None]:
    """Flower's ``evaluate_fn`` hook, the last call of every round: the round's metrics line, then its checkpoint.

    Both are on disk as soon as the round ends, so a crashed run loses at most the round in flight, and a
    run resumed from the checkpoint keeps the figures of the rounds before it and goes on from the server's
    state after it (``server_state``).
    """

    def after_round(server_round: int, arrays: ArrayRecord) -> None:
        if server_round > 0:
            run_round = recorded.offset + server_round
            record = _round_record(
                run_round,
                recorded.train,
                recorded.evaluate,
                budget.measures_used.get(run_round, ""),
                budget.measure,  # the hook runs last in the round: the signal the next round gates on
            )
            if privacy is not None:
                record[DP_EPSILON] = privacy.epsilon
            append_round(run_dir, record)
            _warn_of_fallbacks(record)
            state = None if privacy is None else privacy.state()
            save_checkpoint(run_dir, run_round, arrays, budget.tau, budget.measure, state, server_state())

    return after_round


def _warn_of_fallbacks(record: dict[str, Any]) -> None:
    """Say in the server's log when nodes served lists of their own: an unreachable service is otherwise silent.

    Each node only warns in its own log; on edge boxes the operator reads the server's.
    """
    train, evaluation = (int(record.get(key, 0)) for key in (f"train-{records.FALLBACKS}", records.FALLBACKS))
    if train + evaluation:
        log(
            WARNING,
            "round %d: %d lists (training %d, evaluation %d) did not come from the candidate service, so the "
            "nodes fell back (training examples dropped; the stale list or the SRM's own top-K served). Check "
            "that every box reaches federation.service_url (its /healthz), and the boxes' own logs for the reason",
            record["round"],
            train + evaluation,
            train,
            evaluation,
        )


def _round_record(
    server_round: int,
    train: MetricRecord | None,
    evaluation: MetricRecord | None,
    measure: str,
    next_measure: str,
) -> dict[str, Any]:
    """One JSON line: training and (summed) validation figures, the gate and its realized rate, the next gate.

    The gate is the round's signal and τ; the next is the signal and τ calibrated from this round (with
    ``auto`` the signal may change from round to round, and a τ means nothing without its signal).
    """
    record: dict[str, Any] = {
        "round": server_round,
        **{k if k.startswith("train-") else f"train-{k}": v for k, v in (train or {}).items()},
    }
    if evaluation is not None and (valid := _any_outcome(evaluation, "valid")) is not None:
        record["valid-fused-ndcg@10"] = float(valid.means()["stale-ndcg"][valid.best_alpha()])
        record["valid-users"] = valid.users
        record[records.MEASURE] = measure
        for key in (
            records.TAU,
            records.NEXT_TAU,
            records.REQUESTS,
            records.REALIZED_RATE,
            records.FRESH_SENT,
            records.FALLBACKS,
        ):
            if key in evaluation:
                record[key] = evaluation[key]
        if records.NEXT_TAU in record:
            record[records.NEXT_MEASURE] = next_measure
        # label-free, so the gate's calibration can be replayed from the run (benchmarks/gate_window.py)
        record[SIGNAL_HISTOGRAMS] = {
            m: outcome.bin_count.tolist()
            for m, outcome in records.stage_outcomes(evaluation, "test", MEASURES).items()
        }
    return record


def _any_outcome(metrics: MetricRecord, stage: str) -> StageOutcome | None:
    """The stage's outcome under any signal (rankings and totals are the same under each); None if absent."""
    return next(iter(records.stage_outcomes(metrics, stage, MEASURES).values()), None)


class FinalGate(NamedTuple):
    """The τ the final evaluation's devices request with, and what it was calibrated on.

    ``users``: how many users' signals; ``fallbacks``: how many stale lists the nodes could not get from the cloud
    to bin them.
    """

    tau: float
    users: int
    fallbacks: int  # stale lists the nodes could not get from the cloud while binning


def _final_gate(
    grid: PartitionOrderedGrid, arrays: ArrayRecord, measure: str, fed: FederationConfig, fleet: int
) -> FinalGate:
    """Calibrate the gate on the final model: τ from every connected node's histogram of ``measure``.

    An ``all`` fleet's rounds gate with a τ from a sample of users, under the model of a round or two before,
    so the rate it realizes strays from the budget (at 5 % on the default run, τ from the last two rounds
    would have realized 2.1 to 7.0 %: README, ``benchmarks/gate_window.py``). The signal reads no label, so
    before serving, the fleet bins it under the model it will serve (``query.signals``, into
    ``FINAL_GATE_BINS`` bins), and the server sets τ on the sum: the rate the final evaluation realizes is
    then the budget up to the coin flips of τ's bin.
    """
    counts, fallbacks = fleet_signal_counts(grid, arrays, measure, FINAL_GATE_BINS, fleet)
    tau = threshold_for_budget(counts, signal_bin_edges(FINAL_GATE_BINS), fed.budget)
    log(
        INFO,
        "final gate: %s tau %.4f for a %.3f budget, calibrated on %d users",
        measure,
        tau,
        fed.budget,
        counts.sum(),
    )
    return FinalGate(tau, int(counts.sum()), fallbacks)


def fleet_signal_counts(
    grid: PartitionOrderedGrid, arrays: ArrayRecord, measure: str, bins: int, fleet: int
) -> tuple[np.ndarray, int]:
    """The connected nodes' users per bin of ``measure`` under ``arrays`` (``query.signals``, label-free).

    Also how many stale lists the nodes could not get from the cloud to bin it.
    """
    sums = MetricSums()
    for reply in _ask_fleet(
        grid, _signals_question(arrays, measure, bins), SIGNALS, fleet, "gate calibration"
    ):
        sums.add(reply.content)
    summed = sums.result()
    return np.asarray(summed[records.SIGNAL_COUNTS], dtype=float), int(summed[records.FALLBACKS])


def _sample_signal_counts(grid: PartitionOrderedGrid, fed: FederationConfig) -> SampleCounts:
    """A gated fleet's round calibration: the sampled nodes' histogram of a signal under the round's model.

    ``RequestBudget``'s ``sample_counts``. In a gated fleet the rounds' requests reach the cloud, so each
    round's τ is calibrated as the final gate is, on the model it gates with, but over the round's sample and
    on the rounds' ``federation.bins``. A node that fails is left out, and a stale list a node could not get
    is binned by the SRM's own list that stands in for it, each with a warning; ``None`` when none answered.
    """
    what = "the round's gate calibration"

    def sample_counts(nodes: list[int], arrays: ArrayRecord, measure: str) -> np.ndarray | None:
        content = _signals_question(arrays, measure, fed.bins)
        messages = [Message(content, dst_node_id=node, message_type=SIGNALS) for node in nodes]
        sums, usable, reasons = MetricSums(), 0, []
        for reply in _usable(grid.ordered_replies(messages, REPLY_TIMEOUT_S), reasons):
            sums.add(reply.content)
            usable += 1
        summed = sums.result()
        _warn_of_failures(what, len(messages), usable, reasons, "τ is calibrated on the rest")
        if fallbacks := int(summed.get(records.FALLBACKS, 0)):
            log(WARNING, "%s: %d stale lists did not come from the candidate service", what, fallbacks)
        if records.SIGNAL_COUNTS not in summed:
            return None
        return np.asarray(summed[records.SIGNAL_COUNTS], dtype=float)

    return sample_counts


def _signals_question(arrays: ArrayRecord, measure: str, bins: int) -> RecordDict:
    """The content of ``query.signals``: bin ``measure`` into ``bins`` bins under the model ``arrays``."""
    config = ConfigRecord({records.MEASURE: measure, records.GATE_BINS: bins})
    return RecordDict({records.ARRAYS: arrays, records.CONFIG: config})


def _ask_fleet(
    grid: PartitionOrderedGrid, content: RecordDict, message_type: str, fleet: int, what: str
) -> Iterator[Message]:
    """Send ``content`` to every connected node; its replies without error, in partition order as they come.

    The caller folds them (a fleet of one-user devices sends hundreds of MiB of replies). The nodes that joined
    since they were last asked are asked their partition first, so that a box that reconnected under a new id is
    asked once (``PartitionOrderedGrid``). When every reply is in: the failures are warned of, and if no reply
    was usable, an error.
    """
    grid.learn_new_nodes()
    connected = list(grid.get_node_ids())
    if (boxes := len(connected)) < fleet:
        log(
            WARNING,
            "%s: %d of the fleet's %d nodes are connected; the report covers their users only",
            what,
            boxes,
            fleet,
        )
    messages = [Message(content, dst_node_id=node, message_type=message_type) for node in connected]
    log(INFO, "%s: asking %d nodes", what, len(messages))
    reasons: list[str] = []  # why each unusable reply is (one of unsound sums is left out as a failed one is)
    usable = 0

    def arrived(count: int) -> None:
        """Log each tenth of the replies as they come (the sums wait for each reply's turn in partition order)."""
        asked = len(messages)
        if asked >= PROGRESS_NODES and count < asked and count * 10 // asked > (count - 1) * 10 // asked:
            log(INFO, "%s: %d of %d nodes answered", what, count, asked)

    for reply in _usable(grid.ordered_replies(messages, REPLY_TIMEOUT_S, arrived), reasons):
        usable += 1
        yield reply
    if not usable:
        who = (
            f"all {len(messages)} nodes failed (the first: {_first(reasons)})"
            if messages
            else "no node is connected"
        )
        raise LSC4RecError(
            f"{what}: {who}, so there is no report to write. Fix that and resume the run from its last "
            "checkpoint."
        )
    _warn_of_failures(what, len(messages), usable, reasons, "the report covers the rest")


def _usable(replies: Iterable[Message], reasons: list[str]) -> Iterator[Message]:
    """The replies whose sums can be added, in order; why each other one cannot is appended to ``reasons``."""
    for reply in replies:
        if (reason := _unusable(reply)) is None:
            yield reply
        else:
            reasons.append(reason)


def _unusable(reply: Message) -> str | None:
    """Why a node's reply to the server cannot be summed (its error, a sum not finite and >= 0), or None."""
    return reply.error.reason if reply.has_error() else records.unsound_reply(reply)


def _first(reasons: list[str]) -> str:
    """The first failure's reason, for a message; a node that never replied gave none."""
    return reasons[0] if reasons else "no reply before the timeout"


def _warn_of_failures(what: str, asked: int, usable: int, reasons: list[str], then: str) -> None:
    """Warn when some of the ``asked`` nodes gave no usable reply to ``what``, naming the first reason."""
    if failed := asked - usable:
        log(
            WARNING,
            "%s: %d of %d nodes failed (the first: %s); %s",
            what,
            failed,
            asked,
            _first(reasons),
            then,
        )


def _final_evaluation(
    grid: PartitionOrderedGrid, arrays: ArrayRecord, tau: float, measure: str, rounds: int, fleet: int
) -> tuple[MetricRecord, list[int]]:
    """Evaluate the final global SRM on every connected node (adaptation, collaborative inference).

    Returns the sum of the replies and the ids of the nodes that answered.
    """
    config = ConfigRecord(
        {
            records.TAU: tau,
            records.MEASURE: measure,
            records.GATE_BINS: FINAL_GATE_BINS,
            records.SERVER_ROUND: rounds,
        }
    )
    content = RecordDict({records.ARRAYS: arrays, records.CONFIG: config})
    sums, answered = MetricSums(), []
    for reply in _ask_fleet(grid, content, MessageType.EVALUATE, fleet, "final evaluation"):
        sums.add(reply.content)
        answered.append(reply.metadata.src_node_id)
    return sums.result(), answered


def _reported_users(
    grid: PartitionOrderedGrid, answered: list[int], nodes: int, seed: int, num_users: int, reported: int
) -> np.ndarray | None:
    """The users of the nodes that answered, so that the floors cover the users the report covers.

    ``None`` (every user) when all answered, or when a node that answered never told its partition (it failed
    the question); then with a warning. Each partition was checked when its node was asked it.
    """
    if reported == num_users:
        return None
    found = [grid.partitions.get(node) for node in answered]
    if None in found:
        log(WARNING, "the floors cover every user: a node that answered never told its partition")
        return None
    parts = partition_users(num_users, nodes, seed)
    return np.sort(np.concatenate([parts[p] for p in found]))


def _collaborative(fed: FederationConfig) -> str:
    """The protocol's word on collaborative training (no commas: the protocol line is comma-separated).

    ``collab_prefixes`` > 0 trains on the extra prefixes even at weight 0, so only 0 prefixes is "off".
    """
    if not fed.collab_prefixes:
        return "off"
    return f"the {fed.collab_prefixes} newest prefixes per user against the LLM's list at weight {fed.collab_weight:g}"


def _protocol(cfg: RunConfig, nodes: int) -> dict[str, Any]:
    fed = cfg.federation
    return {
        "dataset": cfg.data.dataset,
        "k-core": cfg.data.kcore,
        "numbering": cfg.data.numbering,
        "lag": cfg.data.lag,
        "K": cfg.llm.k,
        "srm": cfg.srm.model,
        "loss": cfg.srm.loss,
        "nodes": nodes,
        "rounds": fed.rounds,
        "strategy": fed.strategy,
        "collaborative training": _collaborative(fed),
        "adaptation": (
            f"{fed.adapt_steps} steps on the newest {cfg.srm.max_len + 1} items" if fed.adapt_steps else "off"
        ),
        "fusion": f"α·LLM + (1 - α)·SRM on {fed.norm}-normalised lists",
        "α choice": alpha_rule(fed),
        "budget": fed.budget,
        "measure": fed.measure,
        "fresh lists": (
            "every evaluated user's" if fed.fresh_lists == "all" else "only where the live gate asked"
        ),
        "differential privacy": (
            f"central, per node: clip {fed.dp_clip:g}, noise multiplier {fed.dp_noise:g}, δ {fed.dp_delta:g}, "
            "zero-out neighbours"
            if fed.private
            else "off"
        ),
        "ranking": "over the candidate list (targets outside it are misses)",
    }
