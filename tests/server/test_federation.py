"""The real ServerApp and ClientApp over the in-process grid, with the real candidate service on loopback."""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, strategy_utils
from flwr.supercore.privacy_accounting import GaussianPrivacyEvent

import clients.app
import clients.inference
import server.app
import server.inprocess as inprocess
from clients.app import app as client_app
from clients.cloud import OUTAGES
from clients.node import load_node
from clients.srm import build_srm
from llm_cloud.processes import free_port, start_service
from lsc4rec import records
from lsc4rec.config import MEASURES, RunConfig
from lsc4rec.credentials import make_loopback_tls
from lsc4rec.data.partition import partition_users
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.data.split import TemporalSplit
from lsc4rec.errors import ConfigError, DataFormatError, LSC4RecError
from lsc4rec.floors import reference_floors
from lsc4rec.outcomes import requested_share, signal_bin_edges, threshold_for_budget
from lsc4rec.protocol import API_KEY_ENV, SERVICE_CA_ENV
from lsc4rec.scoring import evaluate_full
from server.app import (
    DP_EPSILON,
    FINAL_GATE_BINS,
    SIGNALS,
    _final_evaluation,
    _privacy,
    _protocol,
    fleet_signal_counts,
)
from server.app import app as server_app
from server.checkpoint import (
    Checkpoint,
    complete_checkpoints,
    latest_checkpoint,
    load_global_srm,
    save_ledger,
)
from server.fleet import PartitionOrderedGrid
from server.inprocess import FIRST_NODE_ID, InProcessGrid, run_in_process
from server.report import (
    FINAL_SUMS_FILE,
    REPORT_FILES,
    ROUNDS_FILE,
    SIGNAL_HISTOGRAMS,
    read_final,
    refigure,
)
from strategies.privacy import FleetPrivacy
from tests.conftest import NODES, load_benchmark, silent_server


def run(
    cfg: RunConfig, run_dir: Path, url: str, *extra: str, node_ids: list[int] | None = None
) -> InProcessGrid:
    cfg = cfg.override([f"federation.run_dir={run_dir}", f"federation.service_url={url}", *extra])
    return run_in_process(server_app, client_app, NODES, cfg.to_flat(), node_ids)


def rounds(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / ROUNDS_FILE).read_text().splitlines()]


def test_federation_trains_checkpoints_and_reports(
    federation_config: RunConfig,
    service: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grid = run(
        federation_config,
        tmp_path,
        service,
        "federation.rounds=4",
        "federation.fraction_train=1.0",
        "federation.keep_optimizer=true",  # every node trains every round: its Adam state carries over
        "federation.item_weighted=true",  # the nodes reply item counts beside their weights
    )
    history = rounds(tmp_path)
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    assert all(r["train-rejected-malformed"] == 0 for r in history)  # the counts record is expected
    assert history[-1]["train-loss"] < history[0]["train-loss"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.safetensors")) == [
        f"round-000{i}.safetensors" for i in range(1, 5)
    ]
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["users"] == 24 and 0.0 <= final["alpha"] <= 1.0
    assert [p["budget"] for p in final["policies"]] == [0.0, 0.05, 0.1, 0.2, 0.5, 1.0]
    # tau is calibrated on the test-time signal histogram (no labels), so each budget is met exactly
    assert [p["gated rate"] for p in final["policies"]] == pytest.approx([0.0, 0.05, 0.1, 0.2, 0.5, 1.0])
    assert {"most-popular", "item-transition"} <= set(final["floors"])
    # every row stands beside both views of each floor: the SRM reads the device view even on the stale list
    floors = final["floors"]
    both_views = {
        f"{floor} floor ({view})": floors[floor][query]["ndcg@10"]
        for floor in floors
        for query, view in (("stale", "cloud view"), ("fresh", "device view"))
    }
    assert all(both_views.items() <= r.items() for r in final["rankings"])
    stale, fresh = (floors["item-transition"][query]["ndcg@10"] for query in ("stale", "fresh"))
    assert stale != fresh  # so the views are told apart
    for p in final["policies"]:  # a floor served by the cloud at the budget, and the one the device runs
        served = p["item-transition floor (cloud at budget)"]
        assert served == pytest.approx((1 - p["budget"]) * stale + p["budget"] * fresh)
        assert p["item-transition floor (device view)"] == fresh
    # the spread of random requests: none at rates 0 and 1, some in between (the fleet's gains differ by user)
    spread = [p["random sd at gated rate"] for p in final["policies"]]
    assert spread[0] == 0.0 and spread[-1] == pytest.approx(0.0) and all(s >= 0 for s in spread)
    curve, chosen = final["fused ndcg@10 by alpha"], final["alphas"].index(final["alpha"])
    best = curve["valid"].index(max(curve["valid"]))  # validation's best α, before its margin
    # the report computed again from the saved sums: the same figures under the run's own settings ...
    cfg = RunConfig.load(tmp_path / "config.json")
    assert cfg.federation.alpha_margin_se == 1.0
    again = refigure(tmp_path, cfg.federation)
    assert json.loads(json.dumps({"protocol": again[1], **again[0]})) == final
    # ... and validation's best α with no margin, every figure of the stale list read at it
    best_figures, protocol = refigure(tmp_path, cfg.override(["federation.alpha_margin_se=0"]).federation)
    assert best_figures["alpha"] == final["alphas"][best] and protocol["α choice"] == "validation's best"
    assert best_figures["fused ndcg@10 by alpha"] == curve and best_figures["users"] == final["users"]
    assert final["protocol"]["α choice"].startswith("validation's best unless within 1 paired se")
    # the benchmark's table of the finished run under the other rule, computed from the saved sums
    table = tmp_path / "table.json"
    argv = ["--report-only", str(tmp_path), "--set", "federation.alpha_margin_se=0", "--json", str(table)]
    monkeypatch.setattr(sys, "argv", ["federation_quality.py", *argv])
    load_benchmark("federation_quality").main()
    fused_row = next(r for r in json.loads(table.read_text())["rows"] if r["row"] == "fused (stale list)")
    assert fused_row["alpha"] == best_figures["alpha"]
    assert fused_row["ndcg@10"] == pytest.approx(curve["test"][best])
    fused = next(r for r in final["rankings"] if (r["ranking"], r["list"]) == ("fused", "stale"))
    assert curve["test"][chosen] == pytest.approx(fused["ndcg@10"])
    assert final["valid"]["fused ndcg@10"] == pytest.approx(curve["valid"][chosen])
    assert sorted((r["ranking"], r["list"]) for r in final["rankings"]) == [
        (name, lst) for name in ("LLM-only", "SRM-only", "fused") for lst in ("fresh", "stale")
    ]
    # measure "auto": every signal is evaluated, the gate starts on drift and follows validation's choice
    assert final["request signal"] in MEASURES and history[0]["request-signal"] == "drift"
    assert [(r["signal"], r["budget"]) for r in final["signals"]] == [
        (m, b) for m in MEASURES for b in (0.05, 0.1, 0.2)
    ]  # every signal against random on validation (which chose) and on test (shown only)
    summed = {m: sum(r["valid gain"] for r in final["signals"] if r["signal"] == m) for m in MEASURES}
    assert summed[final["request signal"]] == max(summed.values())  # validation's choice over 5, 10, 20 %
    summary = (tmp_path / "summary.md").read_text()
    assert "| fused | stale |" in summary and "item-transition floor (device view)" in summary
    assert "beside the τ of the last round" in summary  # an `all` run's window τ, kept for comparison
    # an `all` fleet sends every user's test and validation view once, in a round or in the final evaluation
    assert final["fresh views sent in the rounds"] + final["fresh views sent in the final evaluation"] == 48
    assert final["fresh views sent in the rounds"] == sum(r["fresh-views-sent"] for r in history) > 0
    assert "did not deliver" not in summary  # the service answered every request
    assert "did not come from the candidate service" not in caplog.text  # so no round warned of fallbacks
    assert "[ROUND 4/4]" in caplog.text  # where Flower's own lines are captured too
    # check 1's margins over both rows, as the rankings give them, each with the spread of its 24 differences
    stale = {r["ranking"]: r["ndcg@10"] for r in final["rankings"] if r["list"] == "stale"}
    itself = {0.0: "over SRM-only", 1.0: "over LLM-only"}.get(final["alpha"])  # no margin over itself said
    for name, margin in final["fused margins"].items():
        assert margin["ndcg@10"] == pytest.approx(stale["fused"] - stale[name.removeprefix("over ")])
        said = f"{name} {margin['ndcg@10']:+.4f} (paired se" in summary
        assert margin["paired se"] >= 0 and said == (name != itself)
    assert itself is None or f"(at α = {final['alpha']:.0f} fused is {itself[5:]})," in summary
    assert final["fused margins"]["over LLM-only"]["paired se"] > 0 or final["alpha"] == 1.0
    assert f"Request signal: {final['request signal']}" in summary and "## Every request signal" in summary
    assert f"measure auto (validation chose {final['request signal']})," in summary.splitlines()[2]
    # the final evaluation's gate was calibrated on all 24 users' signals under the final model, label-free
    fed, signal = federation_config.federation, final["live gate signal"]
    assert final["live gate tau calibrated on users"] == 24
    assert "τ calibrated on the 24 users' label-free signals under the final model" in summary
    # the protocol line says how the SRM learnt from the LLM's lists and how the two were fused
    protocol = final["protocol"]
    assert protocol["collaborative training"].startswith(f"the {fed.collab_prefixes} newest prefixes")
    assert protocol["adaptation"].startswith(f"{fed.adapt_steps} steps") and "minmax" in protocol["fusion"]
    assert "collaborative training the " in summary.splitlines()[2]
    # the nodes asked again with the final model bin the very signals the final evaluation binned (the same
    # personal copies), and in the gate's fine bins they give its τ
    arrays, grid = latest_checkpoint(tmp_path).arrays, PartitionOrderedGrid.discover(grid, NODES, 24)
    assert (
        fleet_signal_counts(grid, arrays, signal, fed.bins, NODES)[0].tolist()
        == final[SIGNAL_HISTOGRAMS][signal]
    )
    fine, fallbacks = fleet_signal_counts(grid, arrays, signal, FINAL_GATE_BINS, NODES)
    assert fallbacks == 0 == final["cloud fallbacks (gate calibration)"]
    edges = signal_bin_edges(FINAL_GATE_BINS)
    assert final["live gate tau"] == pytest.approx(threshold_for_budget(fine, edges, fed.budget))
    # every user in a bin above τ requested, and of τ's own bin some share (coin flips)
    own = int(np.searchsorted(edges, final["live gate tau"], side="right")) - 1
    requested = round(final["live gate realized request rate"] * 24)
    assert sum(fine[own + 1 :]) <= requested <= sum(fine[own:])
    # the τ the rounds had calibrated (on samples, under earlier models) is kept beside it, with its rate here
    assert final["tau of the last round"] == pytest.approx(history[-1]["next-request-tau"])
    # each round names the signal its next τ is a threshold of: the one the next round gates on
    assert all(
        now["next-request-signal"] == then["request-signal"] for now, then in itertools.pairwise(history)
    )
    assert history[-1]["next-request-signal"] == final["live gate signal"]
    share = requested_share(signal_bin_edges(fed.bins), final["tau of the last round"])
    live = final[SIGNAL_HISTOGRAMS][signal]
    assert final["expected rate of the last round's tau"] == pytest.approx(float(share @ live) / 24)
    # every signal's test-time histogram, per round and final, so the gate can be replayed from the run
    assert all(
        set(h[SIGNAL_HISTOGRAMS]) == set(MEASURES)
        and all(sum(c) == h["valid-users"] for c in h[SIGNAL_HISTOGRAMS].values())
        for h in history
    )
    assert {m: sum(c) for m, c in final[SIGNAL_HISTOGRAMS].items()} == dict.fromkeys(MEASURES, 24)
    assert "- rejected updates: 0\n" in summary  # counts print as counts
    assert (tmp_path / "validation_per_round.png").stat().st_size > 0
    assert (tmp_path / "ndcg_vs_request_rate.png").stat().st_size > 0
    # the nodes' full-catalogue figure of the global SRM equals a central evaluation of the final checkpoint
    split = TemporalSplit(
        load_or_prepare(federation_config.data, federation_config.seed), federation_config.data.lag
    )
    model = load_global_srm(federation_config, split.dataset.num_items, tmp_path)
    central = evaluate_full(model, split, "test", federation_config.srm.max_len)["ndcg@10"]
    assert final["federated SRM full-catalogue ndcg@10 (global)"] == pytest.approx(central, abs=1e-9)


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ([], "the 3 newest prefixes per user against the LLM's list at weight 0.02"),
        (["federation.collab_weight=0"], "the 3 newest prefixes per user against the LLM's list at weight 0"),
        (["federation.collab_prefixes=0"], "off"),
    ],
)
def test_the_protocol_says_off_only_when_no_collaborative_prefix_is_trained(
    settings: list, said: str
) -> None:
    """At weight 0 the nodes still fetch lists and train on the extra prefixes: that is not the run without them."""
    protocol = _protocol(RunConfig().override(settings), nodes=10)
    assert protocol["collaborative training"] == said
    assert not any("," in str(value) for key, value in protocol.items() if key != "differential privacy")


def fresh_fleet(cfg: RunConfig) -> PartitionOrderedGrid:
    """A fleet of ``NODES`` nodes that have seen nothing yet, the server's grid to it."""
    grid = InProcessGrid(client_app, NODES, cfg.to_flat())
    inprocess.act_as_server(grid, cfg.to_flat())
    return PartitionOrderedGrid.discover(grid, NODES, 24)


def untrained_srm(cfg: RunConfig, seed: int = 0) -> ArrayRecord:
    """An untrained SRM's arrays, the same for the same seed whatever ran before (it reads the global generator)."""
    torch.manual_seed(cfg.seed + seed)
    return ArrayRecord(build_srm(cfg.srm, load_or_prepare(cfg.data, cfg.seed).num_items).state_dict())


def evaluate_untrained(cfg: RunConfig) -> tuple[PartitionOrderedGrid, ArrayRecord, MetricRecord]:
    """A fresh fleet's grid, an untrained SRM's arrays, and the server's final evaluation of them (gate off)."""
    grid, arrays = fresh_fleet(cfg), untrained_srm(cfg)
    summed, _ = _final_evaluation(grid, arrays, 1.0, "confidence", 1, NODES)
    return grid, arrays, summed


@pytest.mark.parametrize("model", ["gru4rec", "din"])
def test_the_other_srms_federate_end_to_end(
    federation_config: RunConfig, service: str, tmp_path: Path, model: str
) -> None:
    """`--srm gru4rec|din`: the devices train, checkpoint and report with the model they were told to build."""
    run(federation_config, tmp_path, service, f"srm.model={model}", "federation.rounds=2")
    history = rounds(tmp_path)
    assert [r["round"] for r in history] == [1, 2] and all(np.isfinite(r["train-loss"]) for r in history)
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["protocol"]["srm"] == model and final["users"] == 24
    cfg = federation_config.override([f"srm.model={model}"])
    load_global_srm(cfg, load_or_prepare(cfg.data, cfg.seed).num_items, tmp_path)  # a strict load: it fits
    with pytest.raises(
        RuntimeError, match="state_dict"
    ):  # the checkpoint holds this model's weights, not SASRec's
        load_global_srm(federation_config, load_or_prepare(cfg.data, cfg.seed).num_items, tmp_path)


def test_the_gate_calibration_bins_the_signals_the_evaluation_bins(
    federation_config: RunConfig, service: str
) -> None:
    """The calibration pass adapts each node's personal copy as the evaluation does, whatever ran before it.

    In a thousand bins a personal copy adapted with other dropout draws would show; the evaluation adapts
    a copy for validation first, the calibration only the test one. The nodes keep no copy, or the calibration
    would serve the evaluation's instead of adapting its own.
    """
    # 1000 bins, as the gate: one α (LLM-only, SRM-only) keeps each reply within the bound on bins x alphas
    cfg = federation_config.override(
        [
            f"federation.service_url={service}",
            "federation.bins=1000",
            "federation.alpha_steps=1",
            "federation.keep_personal=false",
        ]
    )
    grid, arrays, summed = evaluate_untrained(cfg)
    evaluated = summed[f"{records.outcome_prefix('test', 'confidence')}-bin-count"]
    assert cfg.federation.adapt_steps > 0 and cfg.srm.dropout > 0 and sum(evaluated) == 24
    assert fleet_signal_counts(grid, arrays, "confidence", 1000, NODES)[0].tolist() == list(evaluated)


def test_nodes_keep_their_personal_copy_unless_told_not_to(
    federation_config: RunConfig, service: str
) -> None:
    """``federation.keep_personal``: the adapted copy stays in the node's state, or not; the figures are the same."""
    results = {}
    for keep in (True, False):
        cfg = federation_config.override(
            [f"federation.service_url={service}", f"federation.keep_personal={str(keep).lower()}"]
        )
        grid, arrays, results[keep] = evaluate_untrained(cfg)
        kept = [c.state.get(records.STATE_PERSONAL) for c in grid.grid.contexts.values()]
        if keep:  # every node holds an adapted copy, not the global model it received
            assert all(
                any(not np.array_equal(k[name].numpy(), arrays[name].numpy()) for name in arrays)
                for k in kept
            )
        else:
            assert kept == [None] * NODES
    assert dict(results[True]) == dict(results[False])


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(user, history length) of every history the nodes ask the cloud for: the real cache, its misses recorded.

    Recorded by user, as the node's cache keys its lists: the synthetic users' histories overlap item for item.
    """
    keys: list[tuple[int, int]] = []
    fetch = clients.app.ListCache.fetch

    def recording(
        self: clients.app.ListCache,
        client: clients.app.CloudClient,
        users: list[int],
        prefixes: list[np.ndarray],
    ) -> clients.app.CandidateLists:
        keys.extend(
            k for k in ((int(u), len(p)) for u, p in zip(users, prefixes, strict=True)) if k not in self.lists
        )
        return fetch(self, client, users, prefixes)

    monkeypatch.setattr(clients.app.ListCache, "fetch", recording)
    return keys


def view_keys(cfg: RunConfig, side: str, stages: tuple[str, ...] = ("valid", "test")) -> set[tuple[int, int]]:
    """(user, length) of every user's ``side`` view at ``stages``."""
    split = TemporalSplit(load_or_prepare(cfg.data, cfg.seed), cfg.data.lag)
    return {(u, len(h)) for stage in stages for u, h in enumerate(split.views(stage, side))}


@pytest.fixture
def gates(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, np.ndarray]]:
    """Each mask the nodes' gate draws, in order: ``ask`` before a fetch (gated), ``count`` for ``requests``."""
    drawn: list[tuple[str, np.ndarray]] = []
    for module, use in ((clients.app, "ask"), (clients.inference, "count")):

        def recording(*args: object, real: Callable = module.seeded_gate, use: str = use) -> np.ndarray:
            drawn.append((use, real(*args)))
            return drawn[-1][1]

        monkeypatch.setattr(module, "seeded_gate", recording)
    return drawn


@pytest.mark.parametrize(("fresh_lists", "budget"), [("gated", 0.0), ("gated", 0.5), ("all", 0.5)])
def test_a_gated_fleet_sends_its_fresh_views_only_where_its_gate_asks(
    federation_config: RunConfig,
    service: str,
    sent: list[tuple[int, int]],
    gates: list[tuple[str, np.ndarray]],
    monkeypatch: pytest.MonkeyPatch,
    fresh_lists: str,
    budget: float,
) -> None:
    """``federation.fresh_lists = gated``: the cloud gets a user's device view only when the live gate sends it.

    One gate per node, drawn before the fetch, whose mask is counted as requests; the device views the cloud
    received at test are exactly as many; at validation nobody asks. With ``all`` every user's views go, and
    the gate only counts (at both stages).
    """
    cfg = federation_config.override(
        [
            f"federation.service_url={service}",
            f"federation.fresh_lists={fresh_lists}",
            "federation.measure=confidence",
        ]
    )
    # coarse gate bins, so that tau's bin holds several users and its coin flips decide who asks
    monkeypatch.setattr(server.app, "FINAL_GATE_BINS", 4)
    grid, arrays = fresh_fleet(cfg), untrained_srm(cfg)
    counts, _ = fleet_signal_counts(grid, arrays, "confidence", 4, NODES)
    assert set(sent) == view_keys(cfg, "cloud", ("test",))  # the calibration: the lists the devices hold
    tau = threshold_for_budget(counts, signal_bin_edges(4), budget)
    share = requested_share(signal_bin_edges(4), tau)[counts > 0]  # of each bin that holds users
    assert ((share > 0) & (share < 1)).any() or not budget
    sent.clear()
    read: list[list[str]] = []  # the signals each call computes
    computing = clients.inference.request_signals

    def recording(*args: object) -> dict[str, np.ndarray]:
        read.append(list(args[4]))
        return computing(*args)

    monkeypatch.setattr(clients.inference, "request_signals", recording)
    summed, _ = _final_evaluation(grid, arrays, tau, "confidence", 1, NODES)
    # once per node and stage: a gated node bins at test the signal it read to gate its fetch
    assert sum(measures == ["confidence"] for measures in read) == 2 * NODES
    requests = int(summed[records.REQUESTS])
    assert 0 < requests < 24 if budget else requests == 0
    asked = set(sent) & view_keys(cfg, "device", ("test",))
    assert len(asked) == (requests if fresh_lists == "gated" else 24)
    assert set(sent) <= view_keys(cfg, "cloud") | view_keys(cfg, "device")
    at_validation = set(sent) & view_keys(cfg, "device", ("valid",))
    assert len(at_validation) == (0 if fresh_lists == "gated" else 24)
    assert summed[records.FRESH_SENT] == len(asked | at_validation)  # what the nodes say they sent
    # one gate per node and stage it runs at: gated, the one that fetched at test, whose mask is counted as drawn
    drawn = {"gated": ["ask"], "all": ["count", "count"]}[fresh_lists] * NODES
    assert [use for use, _ in gates] == drawn
    assert sum(int(mask.sum()) for use, mask in gates if use == "ask") == (
        requests if fresh_lists == "gated" else 0
    )
    if fresh_lists == "gated" and not budget:
        assert set(sent) <= view_keys(cfg, "cloud")  # no fresh item of any user reached the cloud
    again, _ = _final_evaluation(grid, arrays, tau, "confidence", 1, NODES)
    assert (again[records.REQUESTS], again[records.FRESH_SENT]) == (requests, 0)  # the lists they hold


def test_a_gated_run_reports_what_its_fleet_served(
    federation_config: RunConfig, service: str, tmp_path: Path
) -> None:
    """A gated run's report: the stale and the served (``gated``) rows, nobody asking and the live gate.

    Each round gates with a τ calibrated on its own sample under its own model: the histogram the round's
    evaluation then bins (the first round's too, which an uncalibrated gate would have closed).
    """
    run(
        federation_config,
        tmp_path,
        service,
        "federation.rounds=2",
        "federation.fresh_lists=gated",
        "federation.measure=confidence",
        "federation.budget=0.5",
    )
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["fresh lists"] == "gated" and "signals" not in final
    assert final["protocol"]["fresh lists"] == "only where the live gate asked"
    assert [r["list"] for r in final["rankings"]] == ["stale"] * 3 + ["gated"] * 3
    fused = {r["list"]: r["ndcg@10"] for r in final["rankings"] if r["ranking"] == "fused"}
    never, live = final["policies"]
    assert (never["budget"], never["gated rate"], never["gated ndcg@10"]) == (0.0, 0.0, fused["stale"])
    assert (live["budget"], live["gated ndcg@10"]) == (0.5, fused["gated"])
    assert live["gated rate"] == final["live gate realized request rate"] and 0 < live["gated rate"] < 1
    assert set(final["recall@k"]) == {"stale", "gated"}
    # each round's requests beside its rate, and the run's sum of them in the report
    history = rounds(tmp_path)
    edges = signal_bin_edges(federation_config.federation.bins)
    assert [r[records.TAU] for r in history] == [
        threshold_for_budget(np.asarray(r[SIGNAL_HISTOGRAMS]["confidence"], float), edges, 0.5)
        for r in history
    ]
    assert history[0]["requests"] > 0
    assert [r["requests"] for r in history] == [
        pytest.approx(r["realized-request-rate"] * r["valid-users"]) for r in history
    ]
    assert final["requests in the rounds"] == sum(r["requests"] for r in history) > 0
    sent = sum(r[records.FRESH_SENT] for r in history)
    assert 0 < final["fresh views sent in the rounds"] == sent <= final["requests in the rounds"]
    assert (
        0 < final["fresh views sent in the final evaluation"] <= final["live gate realized request rate"] * 24
    )
    assert "tau of the last round" not in final  # the rounds' window's τ, which a gated run never sent
    summary = (tmp_path / "summary.md").read_text()
    assert (
        "of the lists served under the live gate" in summary and "`federation.fresh_lists = gated`" in summary
    )
    assert "Every request signal" not in summary and "- live gate tau:" in summary
    assert "realized rate is under Other figures" in summary and "τ of the last round" not in summary
    assert all((tmp_path / name).is_file() for name in REPORT_FILES)
    with pytest.raises(DataFormatError, match="fresh_lists = gated"):  # the benchmarks need every policy
        read_final(tmp_path)
    assert read_final(tmp_path, curves=False)["live gate signal"] == "confidence"


def test_a_rounds_gate_calibration_leaves_out_a_failed_node_and_gives_none_when_all_fail(
    federation_config: RunConfig, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A gated round calibrates on the sample's replies that came; with none, the window's τ stands."""
    cfg = federation_config.override(
        [f"federation.service_url={service}", "federation.fresh_lists=gated", "federation.measure=confidence"]
    )
    grid, arrays = fresh_fleet(cfg), untrained_srm(cfg)
    sample_counts = server.app._sample_signal_counts(grid, cfg.federation)
    nodes = sorted(grid.get_node_ids())
    whole = sample_counts(nodes, arrays, "confidence")
    assert whole is not None and len(whole) == cfg.federation.bins and whole.sum() == 24
    down = nodes[:2]
    parts = partition_users(24, NODES, cfg.seed)
    grid.grid.down = set(down)
    with caplog.at_level(logging.WARNING):
        part = sample_counts(nodes, arrays, "confidence")
    assert part is not None and part.sum() == 24 - sum(len(parts[grid.partitions[n]]) for n in down)
    first = min(down, key=grid.partitions.__getitem__)  # the replies come in partition order
    assert (
        f"the round's gate calibration: 2 of {NODES} nodes failed (the first: ConnectionError: node {first} "
        "is down); τ is calibrated on the rest"
    ) in caplog.text
    grid.grid.down = set(nodes)
    assert sample_counts(nodes, arrays, "confidence") is None
    dead = cfg.override([f"federation.service_url=http://127.0.0.1:{free_port()}", "federation.retries=0"])
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # stale lists that never came: the SRM's own lists are binned
        binned = server.app._sample_signal_counts(fresh_fleet(dead), dead.federation)(
            nodes, arrays, "confidence"
        )
    assert binned is not None and binned.sum() == 24
    assert (
        "the round's gate calibration: 24 stale lists did not come from the candidate service" in caplog.text
    )


@pytest.fixture
def adapted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per personal copy the nodes adapt: the real adaptation, counted."""
    count: list[int] = []
    adapt = clients.app.adapt
    monkeypatch.setattr(clients.app, "adapt", lambda *args: count.append(1) or adapt(*args))
    return count


def test_the_final_evaluation_serves_the_copy_the_gate_calibration_adapted(
    federation_config: RunConfig, service: str, adapted: list[int]
) -> None:
    """With the personal copy kept, the final stage adapts each node's test-time copy once, in the gate's
    calibration, and reports what adapting it again reports; a copy adapted from another model is not reused."""

    def final_stage(keep: bool, calibrated_on: ArrayRecord | None) -> tuple[MetricRecord, int]:
        cfg = federation_config.override(
            [f"federation.service_url={service}", f"federation.keep_personal={str(keep).lower()}"]
        )
        grid, arrays = fresh_fleet(cfg), untrained_srm(cfg)
        fleet_signal_counts(
            grid, arrays if calibrated_on is None else calibrated_on, "confidence", FINAL_GATE_BINS, NODES
        )
        adapted.clear()
        summed, _ = _final_evaluation(grid, arrays, 1.0, "confidence", 1, NODES)
        return summed, len(adapted)

    kept, kept_adapted = final_stage(True, None)
    again, again_adapted = final_stage(False, None)
    assert (kept_adapted, again_adapted) == (NODES, 2 * NODES)  # validation's copies, and test's again
    assert dict(kept) == dict(again)
    other = untrained_srm(federation_config, seed=1)
    stale, stale_adapted = final_stage(True, other)  # the calibration adapted a copy of another SRM
    assert stale_adapted == 2 * NODES and dict(stale) == dict(kept)


def test_a_run_adapts_one_test_copy_per_node_and_model(
    federation_config: RunConfig, service: str, tmp_path: Path, adapted: list[int]
) -> None:
    """The last round's evaluation already receives the final model (Flower evaluates after aggregating), so
    its nodes serve their copy to the gate's calibration as well; the report is the one of a run keeping none."""
    counts, finals = {}, {}
    for keep in (False, True):
        adapted.clear()
        run_dir = tmp_path / str(keep)
        run(
            federation_config,
            run_dir,
            service,
            "federation.rounds=2",
            f"federation.keep_personal={str(keep).lower()}",
        )
        counts[keep] = len(adapted)
        finals[keep] = json.loads((run_dir / "final.json").read_text())
        finals[keep].pop("federation seconds")
    evaluated = NODES // 2  # federation.fraction_evaluate = 0.5, each round
    # without a kept copy: each round's evaluation adapts two copies a node, the calibration one, the final two
    assert counts[False] == 2 * 2 * evaluated + NODES + 2 * NODES
    assert counts[True] == counts[False] - NODES - evaluated
    assert finals[True] == finals[False]


class ServerCrash(RuntimeError):
    pass


class EventGrid(InProcessGrid):
    """Calls ``at_call(n)`` before its n-th exchange of messages (1 is the partition query; then each round's
    training and evaluation), where a test makes something go wrong."""

    calls = 0

    def at_call(self, n: int) -> None:
        pass

    def send_and_receive(self, messages, *, timeout=None):
        self.calls += 1
        self.at_call(self.calls)
        return super().send_and_receive(messages, timeout=timeout)


class CrashesInRound3(EventGrid):
    def at_call(self, n: int) -> None:
        if n == 6:  # the partition query, then training and validation of rounds 1 and 2
            raise ServerCrash("the ServerApp died in round 3")


def test_federation_crashed_mid_run_resumes_into_the_uninterrupted_run(
    federation_config: RunConfig, service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server dies in round 3: rounds 1 and 2 are on disk (lines and checkpoints), and the resumed run
    samples, seeds, calibrates and reports as the run that never stopped (half the nodes train each round)."""
    crashed, whole = tmp_path / "crashed", tmp_path / "whole"
    run(federation_config, whole, service, "federation.rounds=4")
    monkeypatch.setattr(inprocess, "InProcessGrid", CrashesInRound3)
    with pytest.raises(ServerCrash):
        run(federation_config, crashed, service, "federation.rounds=4")
    assert [r["round"] for r in rounds(crashed)] == [1, 2]
    assert all("valid-fused-ndcg@10" in r for r in rounds(crashed))
    first = (crashed / "checkpoints" / "round-0002.safetensors").read_bytes()
    gate = json.loads((crashed / "checkpoints" / "round-0002.json").read_text())
    assert gate["request-signal"] in MEASURES  # the gate resumes with its signal as well as its τ
    monkeypatch.setattr(inprocess, "InProcessGrid", InProcessGrid)
    run(federation_config, crashed, service, "federation.rounds=4", "federation.resume=true")
    assert [r["round"] for r in rounds(crashed)] == [1, 2, 3, 4]
    assert (crashed / "checkpoints" / "round-0002.safetensors").read_bytes() == first
    # the resumed run's nodes start holding no list (node state lasts a Flower run), so they send views again
    history = [rounds(folder) for folder in (crashed, whole)]
    sent = [[r.pop(records.FRESH_SENT) for r in lines] for lines in history]
    assert sent[0][:2] == sent[1][:2] and sum(sent[0]) > sum(sent[1])
    assert history[0] == history[1]
    for name in ("round-0003.safetensors", "round-0004.safetensors"):
        assert (crashed / "checkpoints" / name).read_bytes() == (whole / "checkpoints" / name).read_bytes()
    final = [json.loads((folder / "final.json").read_text()) for folder in (crashed, whole)]
    seconds = [f.pop("federation seconds") for f in final]
    for stages in ("rounds", "final evaluation"):
        sent = [f.pop(f"fresh views sent in the {stages}") for f in final]
        assert sent[0] >= sent[1]
    assert final[0] == final[1] and final[0]["users"] == 24
    assert seconds[0] > gate["server"]["federation-seconds"] > 0  # the rounds before the crash count
    after = json.loads((crashed / "checkpoints" / "round-0003.json").read_text())
    assert (
        after["server"]["federation-seconds"] > gate["server"]["federation-seconds"]
    )  # carried on, not restarted


def test_a_finished_run_extended_sets_its_report_aside_until_the_new_one_is_written(
    federation_config: RunConfig, service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of 2 rounds resumed to 3 crashes in round 3: its 2-round report no longer sits beside 3 rounds' files."""

    class CrashesInItsFirstRound(EventGrid):
        def at_call(self, n: int) -> None:
            if n == 2:  # the partition query, then the resumed run's first training
                raise ServerCrash("the ServerApp died in round 3")

    run(federation_config, tmp_path, service, "federation.rounds=2")
    written = (*REPORT_FILES, FINAL_SUMS_FILE)  # the report and the sums it can be computed again from
    before = {name: (tmp_path / name).read_bytes() for name in written}
    monkeypatch.setattr(inprocess, "InProcessGrid", CrashesInItsFirstRound)
    with pytest.raises(ServerCrash):
        run(federation_config, tmp_path, service, "federation.rounds=3", "federation.resume=true")
    aside = tmp_path / "report-round-0002"
    assert not any((tmp_path / name).exists() for name in written)
    assert {name: (aside / name).read_bytes() for name in written} == before
    monkeypatch.setattr(inprocess, "InProcessGrid", InProcessGrid)
    run(federation_config, tmp_path, service, "federation.rounds=3", "federation.resume=true")
    assert json.loads((tmp_path / "final.json").read_text())["protocol"]["rounds"] == 3
    assert json.loads((aside / "final.json").read_text())["protocol"]["rounds"] == 2


def test_a_fresh_run_in_a_used_folder_leaves_no_earlier_sums_to_compute_its_report_from(
    federation_config: RunConfig, service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The earlier run's sums, computed again under the new run's config.json, would pass for the new report."""

    class CrashesInItsFirstRound(EventGrid):
        def at_call(self, n: int) -> None:
            if n == 2:  # the partition query, then the first training
                raise ServerCrash("the ServerApp died in round 1")

    run(federation_config, tmp_path, service, "federation.rounds=1")
    assert (tmp_path / FINAL_SUMS_FILE).is_file() and (tmp_path / ROUNDS_FILE).is_file()
    monkeypatch.setattr(inprocess, "InProcessGrid", CrashesInItsFirstRound)
    with pytest.raises(ServerCrash):
        run(federation_config, tmp_path, service, "federation.rounds=1", "seed=1")
    assert not (tmp_path / FINAL_SUMS_FILE).exists() and not (tmp_path / ROUNDS_FILE).exists()


def test_a_fedavgm_run_with_server_momentum_resumes(
    federation_config: RunConfig, service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FedAvgM pairs the global arrays with the replies by position: a checkpoint's arrays come back in the
    model's order, not the file's (a momentum restarted by the resume is documented)."""
    settings = ("federation.rounds=3", "federation.strategy=fedavgm", "federation.server_momentum=0.9")
    monkeypatch.setattr(inprocess, "InProcessGrid", CrashesInRound3)
    with pytest.raises(ServerCrash):
        run(federation_config, tmp_path, service, *settings)
    monkeypatch.setattr(inprocess, "InProcessGrid", InProcessGrid)
    run(federation_config, tmp_path, service, *settings, "federation.resume=true")
    assert [r["round"] for r in rounds(tmp_path)] == [1, 2, 3]
    assert (tmp_path / "final.json").exists()


class CrashesInFirstEvaluation(EventGrid):
    def at_call(self, n: int) -> None:
        if n == 3:  # the partition query, then the first round's training
            raise ServerCrash("the ServerApp died in its first round's evaluation")


class CrashesAfterRound3Trains(EventGrid):
    def at_call(self, n: int) -> None:
        if n == 7:  # round 3's noised model is released, before its checkpoint is written
            raise ServerCrash("the ServerApp died in round 3's evaluation")


def test_a_private_run_accounts_its_epsilon_across_a_crash_and_a_resume(
    federation_config: RunConfig, service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """federation.dp_noise > 0: each round's ε is recorded, and the accountant's ledger is saved at each release,
    so the resumed run goes on from every release made, round 3's first one too, which its checkpoint never
    held; a resume that would break the accounting is refused by name."""
    private = ("federation.rounds=3", "federation.dp_noise=1.0", "federation.dp_clip=0.5")

    monkeypatch.setattr(inprocess, "InProcessGrid", CrashesAfterRound3Trains)
    with pytest.raises(ServerCrash):
        run(federation_config, tmp_path, service, *private)
    assert sorted(complete_checkpoints(tmp_path)) == [1, 2]
    monkeypatch.setattr(inprocess, "InProcessGrid", InProcessGrid)
    with pytest.raises(LSC4RecError, match=r"Resume it with the federation\.dp_delta"):
        run(
            federation_config,
            tmp_path,
            service,
            *private,
            "federation.resume=true",
            "federation.dp_delta=1e-6",
        )
    run(federation_config, tmp_path, service, *private, "federation.resume=true")
    history = rounds(tmp_path)
    epsilon = [r["dp-epsilon"] for r in history]
    assert [r["round"] for r in history] == [1, 2, 3] and 0 < epsilon[0] < epsilon[1] < epsilon[2]
    reference = FleetPrivacy(FedAvg(), 1.0, 0.5, NODES, 1e-5).accountant
    # 2 of the 4 nodes sampled each round; round 3 was released twice, before the crash and after the resume
    for server_round, (expected, releases) in enumerate(zip(epsilon, (1, 1, 2), strict=True), start=1):
        event = GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=2, population_size=NODES)
        reference.compose(event, count=releases)
        assert expected == pytest.approx(reference.get_privacy_spent().epsilon), server_round
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["DP epsilon at delta 1e-05 (global SRM, per node)"] == pytest.approx(epsilon[-1])
    assert final["DP noised rounds"] == 4
    assert "noise multiplier 1, δ 1e-05, zero-out neighbours" in (tmp_path / "summary.md").read_text()
    # no node's own update norm is published in a private run
    assert not [key for r in history for key in r if "update-norm" in key]
    # rounds released without noise cannot be covered by any ε: checkpointed, or one a resume without noise
    # released before it died (the ledger says so)
    run(federation_config, tmp_path / "plain", service, "federation.rounds=1")
    noiseless = "rounds of this run were released without differential privacy"
    with pytest.raises(LSC4RecError, match=noiseless):
        run(federation_config, tmp_path / "plain", service, *private, "federation.resume=true")
    monkeypatch.setattr(inprocess, "InProcessGrid", CrashesInFirstEvaluation)
    with pytest.raises(ServerCrash):  # round 4 trained and released without noise, then the server died
        run(federation_config, tmp_path, service, "federation.rounds=4", "federation.resume=true")
    monkeypatch.setattr(inprocess, "InProcessGrid", InProcessGrid)
    assert max(complete_checkpoints(tmp_path)) == 3
    with pytest.raises(LSC4RecError, match=noiseless):
        run(federation_config, tmp_path, service, *private, "federation.rounds=4", "federation.resume=true")


def test_a_ledger_restored_from_an_older_copy_does_not_under_report_epsilon(tmp_path: Path) -> None:
    """The accountant that counted more releases goes on, the ledger's or the checkpoint's."""
    fed = RunConfig().override(["federation.dp_noise=1.0", "federation.dp_clip=0.5"]).federation
    accountant = FleetPrivacy(FedAvg(), 1.0, 0.5, NODES, fed.dp_delta)
    event = GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=2, population_size=NODES)
    accountant.accountant.compose(event, count=1)
    older = accountant.state()
    accountant.accountant.compose(event, count=2)
    newer = accountant.state()
    for ledger, checkpoint in ((older, newer), (newer, older)):
        save_ledger(tmp_path, ledger)
        start = Checkpoint(3, ArrayRecord(), 1.0, privacy=checkpoint)
        assert _privacy(FedAvg(), fed, NODES, start, tmp_path).releases == 3


class JitteryGrid(InProcessGrid):
    """Like Flower's simulation: draws from the global ``random`` (its heartbeat thread does), replies in any order."""

    def get_node_ids(self) -> list[int]:
        random.random()
        return super().get_node_ids()

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return list(reversed(list(super().send_and_receive(messages, timeout=timeout))))


def test_same_seed_same_run_whatever_the_node_ids(
    federation_config: RunConfig, service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flower's simulation draws new node ids per run and its threads draw from ``random``; the runs still agree."""
    settings = ("federation.rounds=3", "federation.fraction_train=0.75")  # 3 of 4 nodes: float sums of 3
    run(federation_config, tmp_path / "first", service, *settings, node_ids=[7, 3, 11, 5])
    monkeypatch.setattr(inprocess, "InProcessGrid", JitteryGrid)
    run(federation_config, tmp_path / "second", service, *settings, node_ids=[20, 40, 10, 30])
    losses = [[r["train-loss"] for r in rounds(tmp_path / name)] for name in ("first", "second")]
    assert losses[0] == losses[1]  # the same nodes train each round
    first, second = (tmp_path / n / "checkpoints" / "round-0003.safetensors" for n in ("first", "second"))
    assert first.read_bytes() == second.read_bytes()


def test_federation_survives_dead_service_and_crashed_node(
    federation_config: RunConfig,
    federation_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The service dies after the first round's messages: rounds complete, fallbacks are counted."""
    server = start_service(["--checkpoint", str(federation_checkpoint)], free_port(), tmp_path / "svc.log")

    class StopsServiceGrid(EventGrid):
        def at_call(self, n: int) -> None:
            if n == 3:  # after the partition query and round 1's training, before its evaluation
                server.stop()
                self.down.add(next(iter(self.contexts)))  # and one node crashes for good

    monkeypatch.setattr(inprocess, "InProcessGrid", StopsServiceGrid)
    try:
        run(federation_config, tmp_path, server.url, "federation.rounds=2")
    finally:
        server.stop()
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["cloud fallbacks (final evaluation)"] > 0 and final["cloud fallbacks (gate calibration)"] > 0
    lists = final["cloud fallbacks (final evaluation)"]
    assert f"The cloud did not deliver {lists} lists" in (tmp_path / "summary.md").read_text()
    assert 0 < final["users"] < 24  # the crashed node's users are missing, the rest are reported
    logged = [r.getMessage() for r in caplog.records]
    assert "final evaluation: 1 of 4 nodes failed (the first: ConnectionError: node " in "\n".join(logged)
    assert any(m.endswith("; the report covers the rest") for m in logged)
    assert [r["round"] for r in rounds(tmp_path)] == [1, 2]
    # the server's log says so from the first round the service was down, not only the summary at the end
    warned = [
        r.getMessage() for r in caplog.records if "did not come from the candidate service" in r.getMessage()
    ]
    assert warned and warned[0].startswith("round 1: ") and "federation.service_url" in warned[0]


def test_a_node_whose_process_lasts_one_message_still_skips_a_hung_service(
    federation_config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In deployment Flower runs each message in a new ClientApp process: each message paid for a failed fetch."""

    class ProcessPerMessage(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            replies = []
            for message in messages:
                OUTAGES.clear()  # a new process, whose module state starts afresh
                replies += super().send_and_receive([message], timeout=timeout)
            return replies

    monkeypatch.setattr(inprocess, "InProcessGrid", ProcessPerMessage)
    with silent_server() as (url, connections):
        run(
            federation_config,
            tmp_path,
            url,
            "federation.rounds=2",
            "federation.fraction_train=1.0",
            "federation.timeout_s=0.2",
            "federation.retries=0",
            "federation.cloud_cooldown_s=600",
        )
        assert len(connections) == NODES  # each node's first fetch; its later messages skip the service
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["users"] == 24 and final["cloud fallbacks (final evaluation)"] > 0


def test_a_cloud_down_from_the_start_adds_no_training_examples(
    federation_config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Collaborative examples whose list never came are dropped: each node trains on its own windows only."""
    replies: list[Message] = []

    class RecordsReplies(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            answered = list(super().send_and_receive(messages, timeout=timeout))
            replies.extend(answered)
            return answered

    monkeypatch.setattr(inprocess, "InProcessGrid", RecordsReplies)
    cfg = federation_config.override(["federation.collab_prefixes=3"])
    grid = run(cfg, tmp_path, f"http://127.0.0.1:{free_port()}", "federation.rounds=1")
    trained = [r for r in replies if r.metadata.message_type == MessageType.TRAIN and r.has_content()]
    assert trained
    for reply in trained:
        metrics = reply.content[records.METRICS]
        partition = grid.contexts[reply.metadata.src_node_id].node_config["partition-id"]
        node = load_node(cfg.data, cfg.seed, partition, NODES)
        assert metrics[records.FALLBACKS] > 0  # the prefixes were asked for, and counted as missing
        assert metrics[records.NUM_EXAMPLES] == len(node.training_windows(cfg.srm.max_len))


def test_nodes_with_no_training_example_are_counted_not_averaged_or_called_malformed(
    federation_config: RunConfig, tmp_path: Path
) -> None:
    """Lag 0 lets a user of three interactions join with no SRM target: its node trains on nothing."""
    users = [[3 * u + 1, 3 * u + 2, 3 * u + 3] for u in range(12)] + [list(range(1, 11))] * 2
    folder = tmp_path / "data"
    folder.mkdir()
    lines = [" ".join(map(str, [u + 1, *items])) for u, items in enumerate(users)]
    (folder / "sequential_data.txt").write_text("\n".join(lines) + "\n")
    cfg = federation_config.override([f"data.dataset={folder}", "data.lag=0"])
    empty = [p for p in range(NODES) if not load_node(cfg.data, cfg.seed, p, NODES).training_windows(20)]
    assert 0 < len(empty) < NODES  # the fleet mixes nodes with and without an example
    run(
        cfg,
        tmp_path / "run",
        f"http://127.0.0.1:{free_port()}",  # no cloud: the lists fall back, the training goes on
        "federation.rounds=2",
        "federation.fraction_train=1.0",
        "federation.item_weighted=true",  # the item counts of a node with no sequence
    )
    for line in rounds(tmp_path / "run"):
        assert line["train-empty-updates"] == len(empty) and line["train-rejected-malformed"] == 0
        assert np.isfinite(line["train-loss"]) and line["train-loss"] > 0
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["updates with no training example"] == 2 * len(empty)


def test_rounds_without_an_update_leave_the_starting_model(
    federation_config: RunConfig, service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every training reply fails: Flower's result then holds no weights, and the final evaluation still gets some."""

    class TrainingFailsGrid(InProcessGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            self.down = {
                m.metadata.dst_node_id for m in messages if m.metadata.message_type == MessageType.TRAIN
            }
            return super().send_and_receive(messages, timeout=timeout)

    monkeypatch.setattr(inprocess, "InProcessGrid", TrainingFailsGrid)
    run(federation_config, tmp_path, service, "federation.rounds=1")
    assert "train-loss" not in rounds(tmp_path)[0]  # nothing was aggregated
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["users"] == 24  # every node evaluated the starting model


@pytest.mark.parametrize(
    ("lacking", "reason"),
    [("key", r"refused it \(401\)"), ("CA", f"fails verification against the public CAs.*{SERVICE_CA_ENV}")],
)
def test_a_node_lacking_the_services_key_or_ca_ends_with_its_reason(
    federation_config: RunConfig,
    federation_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lacking: str,
    reason: str,
) -> None:
    """The service wants a key, or has a private certificate, that the nodes were not given: every node fails
    (no fallback lists: that is a setting to fix, not an outage), and the error says why."""
    args, tls = ["--checkpoint", str(federation_checkpoint)], None
    if lacking == "key":
        monkeypatch.setenv(API_KEY_ENV, "the-service-key")
    else:
        tls = make_loopback_tls(tmp_path / "tls")
    server = start_service(args, free_port(), tmp_path / "svc.log", tls=tls)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(SERVICE_CA_ENV, raising=False)
    try:
        with pytest.raises(LSC4RecError, match=rf"all 4 nodes failed \(the first: .*{reason}"):
            run(federation_config, tmp_path, server.url, "federation.rounds=1")
    finally:
        server.stop()
    assert not (tmp_path / "final.json").exists() and (tmp_path / "checkpoints").is_dir()


def test_a_node_gone_offline_does_not_stall_the_rounds(
    federation_config: RunConfig, service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edge box drops off after round 1 (a SuperLink then lists only the others): the run goes on without it."""

    class OfflineGrid(EventGrid):
        def at_call(self, n: int) -> None:
            if n == 4:  # after the partition query and round 1's training and evaluation
                self.offline = max(self.contexts)

        def get_node_ids(self):
            return [node for node in super().get_node_ids() if node != getattr(self, "offline", None)]

    def wait_forever(seconds: float) -> None:
        raise AssertionError("Flower's sampler waited for the offline node to come back")

    monkeypatch.setattr(strategy_utils, "sleep", wait_forever)
    monkeypatch.setattr(inprocess, "InProcessGrid", OfflineGrid)
    run(federation_config, tmp_path, service, "federation.rounds=3", "federation.fraction_train=1.0")
    assert [r["round"] for r in rounds(tmp_path)] == [1, 2, 3]
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["users"] == 18 and final["users missing from the final evaluation"] == 6  # the other 3 nodes
    # the floors beside the rows cover the same 18 users, not the whole fleet's 24
    cfg = federation_config
    split = TemporalSplit(load_or_prepare(cfg.data, cfg.seed), cfg.data.lag)
    kept = np.sort(np.concatenate(partition_users(split.num_users, NODES, cfg.seed)[:-1]))  # the last went
    floors = reference_floors(split, cfg.srm.max_len, kept)
    llm_row = next(r for r in final["rankings"] if (r["ranking"], r["list"]) == ("LLM-only", "stale"))
    cloud_view = llm_row["item-transition floor (cloud view)"]
    assert cloud_view == pytest.approx(floors["item-transition"]["stale"]["ndcg@10"])
    everyone = reference_floors(split, cfg.srm.max_len)["item-transition"]["stale"]["ndcg@10"]
    assert cloud_view != pytest.approx(everyone)  # so the line above tells them apart
    assert "Users: 18 (6 more are missing" in (tmp_path / "summary.md").read_text()
    assert (
        final["users the floors cover"] == 18
        and "the floors cover the same users" in (tmp_path / "summary.md").read_text()
    )


@pytest.mark.parametrize(
    ("old_ids", "fleet_size", "users", "private", "warning"),
    [
        ("answer", NODES, 18, False, "node 1000 is left out: node 5000 joined later with its partition (0)"),
        ("fail", NODES, 18, False, "node 1001 is left out: node 5001 joined later with its partition (1)"),
        ("are gone", NODES, 18, False, None),
        ("answer", NODES, 24, True, "node 1000 is left out: node 5000 joined later with its partition (0)"),
        (
            "answer",
            NODES + 1,
            24,
            False,
            "a node that joined during the run is left out: num-partitions must be",
        ),
    ],
    ids=[
        "old-ids-still-answer",
        "old-ids-listed-but-failing",
        "old-ids-gone",
        "private-run",
        "rejoined-with-a-wrong-node-config",
    ],
)
def test_boxes_that_rejoin_under_new_ids_count_their_users_once(
    federation_config: RunConfig,
    service: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    old_ids: str,
    fleet_size: int,
    users: int,
    private: bool,
    warning: str | None,
) -> None:
    """Two boxes reconnect under new node ids after the start's check of partitions: one after round 1's
    training (its evaluation's sample must know it), one after round 1's evaluation (round 2's training's must).
    Every box trains and evaluates in every round. Their users count once in each round and in the report,
    whether their old ids still answer, fail while still listed, or are gone; a private round is not voided by
    them; their ids do not hide another box gone offline before the final questions (the floors cover the users
    that answered). With a node config that does not fit the fleet, they are left out."""

    class RejoinGrid(EventGrid):
        rejoined = 0

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            kind = messages[0].metadata.message_type
            if users < 24 and kind == SIGNALS:  # at the first final question, another box goes offline
                self.down.add(FIRST_NODE_ID + NODES - 1)
            replies = super().send_and_receive(messages, timeout=timeout)
            if self.rejoined < 2 and kind == (MessageType.TRAIN, MessageType.EVALUATE)[self.rejoined]:
                self.rejoin(FIRST_NODE_ID + self.rejoined, REJOINED + self.rejoined)
                self.rejoined += 1
            return replies

        def rejoin(self, old_id: int, new_id: int) -> None:
            old = self.contexts[old_id]
            told = {**old.node_config, records.NUM_PARTITIONS: fleet_size}
            self.contexts[new_id] = Context(old.run_id, new_id, told, RecordDict(), dict(old.run_config))
            if old_ids != "answer":
                self.down.add(old_id)

        def get_node_ids(self):
            listed = super().get_node_ids()
            return listed if old_ids == "fail" else [node for node in listed if node not in self.down]

    monkeypatch.setattr(inprocess, "InProcessGrid", RejoinGrid)
    privately = ("federation.dp_noise=1.0", "federation.dp_clip=0.5") if private else ()
    run(
        federation_config,
        tmp_path,
        service,
        "federation.rounds=2",
        "federation.fraction_train=1.0",
        "federation.fraction_evaluate=1.0",
        *privately,
    )
    first, second = rounds(tmp_path)
    assert first["valid-users"] == second["valid-users"] == 24
    assert second["train-num-examples"] == first["train-num-examples"]  # the same boxes, each once
    if private:  # round 2 released its model
        assert second[DP_EPSILON] > first[DP_EPSILON] > 0
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["users"] == users and final["users missing from the final evaluation"] == 24 - users
    assert final["users the floors cover"] == users and final["live gate tau calibrated on users"] == users
    gone_offline = users < 24 and old_ids != "fail"  # else the box gone offline is listed, asked, and fails
    assert ("3 of the fleet's 4 nodes are connected" in caplog.text) is gone_offline
    if warning is None:  # the boxes are known again, by their partitions, and nothing needs leaving out
        assert "is left out" not in caplog.text
    else:
        assert warning in caplog.text
    assert "never told its partition" not in caplog.text
    assert first["train-failed"] == second["train-failed"] == 0  # no message went to an old id


REJOINED = 5000


def test_a_serverapp_given_no_run_folder_names_it_as_the_launcher_does(
    federation_config: RunConfig, service: str, tmp_path: Path
) -> None:
    """`flwr run` on a SuperLink of edge boxes (README) sets no federation.run_dir: the ServerApp makes the folder
    the README names, ``federation-<dataset>-<UTC time>``, as the launcher would."""
    cfg = federation_config.override(
        [f"out_dir={tmp_path}", f"federation.service_url={service}", "federation.rounds=1"]
    )
    run_in_process(server_app, client_app, NODES, cfg.to_flat())
    [folder] = tmp_path.iterdir()
    assert re.fullmatch(rf"federation-{Path(cfg.data.dataset).name}-\d{{8}}-\d{{6}}", folder.name), folder
    assert (folder / "summary.md").is_file()


@pytest.mark.parametrize(
    ("miswire", "message"),
    [  # one partition-id twice would count its users twice
        (
            lambda configs: configs[1].update({"partition-id": 0}),
            "partition-id must differ between nodes, got 0 on nodes 1000 and 1001",
        ),
        (  # a box without --node-config would fail every round with a bare KeyError
            lambda configs: configs[2].clear(),
            r'1 supernode\(s\) \(node ids 1002\).*--node-config "partition-id=I',
        ),
    ],
    ids=["one-partition-twice", "no-node-config"],
)
def test_supernodes_started_with_a_wrong_node_config_stop_the_run_before_training(
    federation_config: RunConfig,
    service: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    miswire: Callable[[list[dict]], None],
    message: str,
) -> None:
    """Supernodes started by hand with a wrong --node-config: a clear error naming the fix, before round 1."""

    class MiswiredGrid(InProcessGrid):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            miswire([context.node_config for context in self.contexts.values()])

    monkeypatch.setattr(inprocess, "InProcessGrid", MiswiredGrid)
    with pytest.raises(ConfigError, match=message):
        run(federation_config, tmp_path, service, "federation.rounds=1")
    assert not (tmp_path / "checkpoints").exists()
