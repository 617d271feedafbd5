"""The Flower ClientApp: one node (a device, or an edge box of several users) of the federation.

``train``: collaborative training of the global SRM on the node's private sequences, with the cloud's lists as
hard negatives. ``evaluate``: adaptive re-training of a personal copy, then collaborative inference (rerank, fuse,
gate) on validation and test, replied as mergeable sums (``lsc4rec.outcomes``). Two queries: the node's
partition (the server orders and checks the fleet by it), and ``signals``, the label-free histogram the server
calibrates the final gate on (and, in a gated fleet, each round's).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.cloud import OUTAGES, CandidateLists, CloudClient, ListCache
from clients.inference import collaborative_inference, held_list_signal, seeded_gate
from clients.node import NodeData, load_node
from clients.srm import SequentialRecommender, build_srm
from clients.training import adapt, load_optimizer_arrays, local_train, optimizer_arrays
from lsc4rec import records
from lsc4rec.config import FederationConfig, RunConfig
from lsc4rec.data.split import Stage
from lsc4rec.errors import ConfigError
from lsc4rec.metrics import metrics_from_ranks
from lsc4rec.outcomes import StageOutcome, signal_bin_edges, signal_bins
from lsc4rec.scoring import catalogue_scores, full_catalogue_ranks

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global SRM on the node's sequences; reply weights, example count and metrics."""
    cfg, node, model = _setup(msg, context)
    fed = cfg.federation
    cache = _held_lists(context)
    sequences = node.training_windows(model.config.max_len)
    negatives = [np.zeros(0, np.int64)] * len(sequences)
    if fed.collab_prefixes > 0:
        users, examples, queries = node.collaborative_prefixes(fed.collab_prefixes)
        rows, hard = _fetch(cfg, node, cache, users, queries).hard_negatives([x[:-1] for x in examples])
        sequences += [examples[r] for r in rows]
        negatives += hard
    optimizer = torch.optim.Adam(model.parameters(), lr=fed.local_lr)
    if fed.keep_optimizer and records.STATE_OPTIMIZER in context.state:
        load_optimizer_arrays(optimizer, context.state[records.STATE_OPTIMIZER].to_torch_state_dict())
    loss = local_train(
        model,
        sequences,
        negatives,
        fed.local_epochs,
        fed.local_batch_size,
        optimizer,
        _round_seed(cfg, msg, context) % 2**32,
        mu=fed.proximal_mu if fed.strategy == "fedprox" else 0.0,
        hard_weight=fed.collab_weight,
    )
    if fed.keep_optimizer:
        context.state[records.STATE_OPTIMIZER] = ArrayRecord(optimizer_arrays(optimizer))
    _keep_held_lists(context, cache)
    metrics = {
        records.NUM_EXAMPLES: len(sequences),
        # with no example there is no loss: 0, not NaN, keeps the record finite, and the fleet's mean skips it
        records.TRAIN_LOSS: loss if sequences else 0.0,
        records.FALLBACKS: cache.fallbacks,
        **_equal_weight(fed),
    }
    content = RecordDict(
        {records.ARRAYS: ArrayRecord(model.state_dict()), records.METRICS: MetricRecord(metrics)}
    )
    if fed.item_weighted:
        items = np.concatenate(sequences) if sequences else np.zeros(0, np.int64)
        counts = np.bincount(items, minlength=node.num_items + 1).astype(np.float32)
        content[records.ITEM_COUNTS] = ArrayRecord({"counts": torch.from_numpy(counts)})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Adapt a personal copy, run collaborative inference on validation and test, reply the sums."""
    cfg, node, model = _setup(msg, context)
    fed = cfg.federation
    config = msg.content[records.CONFIG]
    tau = float(config.get(records.TAU, 1.0))
    live = str(config.get(records.MEASURE, fed.measures[0]))
    gate_bins = _gate_bins(config, fed)
    cache = _held_lists(context)
    alphas = np.array(fed.alphas)
    metrics: dict[str, float | list[float]] = {
        records.NUM_EXAMPLES: len(node.users),
        **_equal_weight(fed),
    }
    sent = 0
    for stage in ("valid", "test"):
        personal = _personal(cfg, node, model, stage, msg, context)
        outcomes, stage_sent = _collaborative_inference(
            cfg, node, cache, personal, stage, alphas, live, tau, gate_bins, _round_seed(cfg, msg, context)
        )
        sent += stage_sent
        # per signal: validation picks the fleet's signal, the test histograms (live lists) calibrate its tau
        for measure, outcome in outcomes.items():
            metrics.update(outcome.to_metrics(records.outcome_prefix(stage, measure)))
        if stage == "test":
            metrics[records.REQUESTS] = outcomes[live].requests
            metrics[records.GLOBAL_NDCG] = _full_catalogue_ndcg_sum(model, node, stage)
            metrics[records.PERSONAL_NDCG] = _full_catalogue_ndcg_sum(personal, node, stage)
    metrics[records.FALLBACKS] = cache.fallbacks
    metrics[records.FRESH_SENT] = sent
    _keep_held_lists(context, cache)
    return Message(RecordDict({records.METRICS: MetricRecord(metrics)}), reply_to=msg)


@app.query(records.SIGNALS_ACTION)
def signals(msg: Message, context: Context) -> Message:
    """The histogram of one request signal over the node's test-time users, on which the server sets a gate.

    Label-free: the node adapts its personal copy of the received model as the evaluation after this will
    (the same data and seed; with ``federation.keep_personal`` the evaluation serves this very copy), and bins
    the signal (``records.MEASURE``) of the stale lists it holds; no target is used and no fresh list is
    requested. The server sets the gate's tau from the fleet's sum.
    """
    cfg, node, model = _setup(msg, context)
    config = msg.content[records.CONFIG]
    measure = str(config[records.MEASURE])
    if measure not in cfg.federation.measures:
        raise ValueError(
            f"the server asked for signal {measure!r}; this run evaluates {cfg.federation.measures}."
        )
    cache = _held_lists(context)
    personal = _personal(cfg, node, model, "test", msg, context)
    device, cloud, _ = node.views("test")
    stale = _stale_lists(cfg, node, cache, personal, device, cloud)
    score = _held_signal(cfg, personal, device, cloud, stale, measure)
    edges = signal_bin_edges(_gate_bins(config, cfg.federation))
    counts = np.bincount(signal_bins(score, edges), minlength=len(edges) - 1).astype(float)
    _keep_held_lists(context, cache)
    return Message(
        RecordDict(
            {
                records.METRICS: MetricRecord(
                    {
                        records.SIGNAL_COUNTS: counts.tolist(),
                        records.FALLBACKS: cache.fallbacks,
                    }
                )
            }
        ),
        reply_to=msg,
    )


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition (id and count): it checks them and orders the fleet by them."""
    told = {records.PARTITION: _partition(context), records.NUM_PARTITIONS: _num_partitions(context)}
    return Message(RecordDict({records.METRICS: MetricRecord(told)}), reply_to=msg)


def _equal_weight(fed: FederationConfig) -> dict[str, int]:
    """The weight a private mean gives every node alike (``records.NODES``), in private runs only."""
    return {records.NODES: 1} if fed.private else {}


def _gate_bins(config: ConfigRecord, fed: FederationConfig) -> int:
    """The gate histogram's bins: the finer ones the server sends for the final gate, else the rounds' (run config)."""
    return int(config.get(records.GATE_BINS, fed.bins))


def _round_seed(cfg: RunConfig, msg: Message, context: Context) -> int:
    """A seed of its own for every node and round (local training's batches, the gate's coin flips)."""
    return (
        cfg.seed + 1000 * int(msg.content[records.CONFIG].get(records.SERVER_ROUND, 0)) + _partition(context)
    )


def _personal(
    cfg: RunConfig, node: NodeData, model: SequentialRecommender, stage: Stage, msg: Message, context: Context
) -> SequentialRecommender:
    """Adaptive re-training: the personal copy of ``model`` (``msg``'s) the node serves ``stage``'s users with.

    With ``federation.keep_personal`` the test-time copy stays in the node's state, tagged with the content id
    of the global model it was adapted from (Flower's hash of its arrays). The final model reaches a node up to
    three times (the last round's evaluation if the node is sampled, the gate's calibration, the final
    evaluation; in a gated fleet a sampled node is asked to calibrate each round's gate before its evaluation
    too); each time after the first, the kept copy is served (the same one: ``adapt`` depends on its
    arguments only) instead of being adapted again. The model is all the tag needs: the node's data and the
    adaptation's settings are fixed for a run, and a node's state lasts one run (a resume is a new Flower run).
    """
    fed = cfg.federation
    keep = fed.keep_personal and stage == "test"
    received = ConfigRecord({"global-model": msg.content[records.ARRAYS].object_id}) if keep else None
    kept_from = context.state.get(records.STATE_PERSONAL_OF)
    if received is not None and kept_from is not None and dict(kept_from) == dict(received):
        # the received model copied: in eval mode, as ``adapt`` returns it, with no draw from the global generator
        personal = copy.deepcopy(model)
        personal.load_state_dict(context.state[records.STATE_PERSONAL].to_torch_state_dict())
        return personal
    windows = node.adaptation_windows(stage, model.config.max_len)
    personal = adapt(model, windows, fed.adapt_steps, fed.adapt_lr, cfg.seed + _partition(context))
    if received is not None:
        context.state[records.STATE_PERSONAL] = ArrayRecord(personal.state_dict())
        context.state[records.STATE_PERSONAL_OF] = received
    return personal


def _partition(context: Context) -> int:
    """The node's partition id: seeds derive from it, not from the node id, which a simulation draws anew per run."""
    return _node_setting(context, records.PARTITION)


def _num_partitions(context: Context) -> int:
    """How many partitions the node was told the fleet has (``num-partitions``; 0 is one user per node)."""
    return _node_setting(context, records.NUM_PARTITIONS)


def _node_setting(context: Context, key: str) -> int:
    """An integer of the node's config, which a simulation sets and a hand-started supernode must be given."""
    if key not in context.node_config:
        raise ConfigError(
            records.NODE_CONFIG_OPTION,
            f"this supernode has no {key}; start it with "
            f'--node-config "{records.PARTITION}=I {records.NUM_PARTITIONS}=N" (I = 0 … N-1, N boxes)',
        )
    return int(context.node_config[key])


def _setup(msg: Message, context: Context) -> tuple[RunConfig, NodeData, SequentialRecommender]:
    """The run config, the node's data and the global SRM from the message."""
    cfg = RunConfig.from_flat(context.run_config)
    torch.set_num_threads(cfg.federation.client_threads)
    partition = _partition(context)
    node = load_node(cfg.data, cfg.seed, partition, _num_partitions(context))
    torch.manual_seed(cfg.seed + partition)
    model = build_srm(cfg.srm, node.num_items)
    model.load_state_dict(msg.content[records.ARRAYS].to_torch_state_dict())
    return cfg, node, model.eval()  # training switches to train mode itself; evaluation must not drop out


def _held_lists(context: Context) -> ListCache:
    """The lists the node holds, and the cloud outages its earlier messages met.

    In deployment each message runs in a process of its own, which would otherwise try a hung service again.
    """
    OUTAGES.restore(context.state.get(records.STATE_OUTAGES))
    return ListCache.from_record(context.state.get(records.STATE_LISTS))


def _keep_held_lists(context: Context, cache: ListCache) -> None:
    """Keep ``cache`` and the outages met so far in the node's state, for its next message."""
    context.state[records.STATE_LISTS] = cache.to_record()
    context.state[records.STATE_OUTAGES] = OUTAGES.to_record()


def _fetch(
    cfg: RunConfig, node: NodeData, cache: ListCache, users: list[int], histories: list[np.ndarray]
) -> CandidateLists:
    """Lists for ``histories`` from the node cache or the candidate service (missing rows on failure)."""
    dataset = node.split.dataset
    client = CloudClient(
        cfg.federation.service_url,
        cfg.llm.k,
        cfg.federation.timeout_s,
        cfg.federation.retries,
        catalogue=(dataset.num_items, dataset.catalogue),
        cooldown_s=cfg.federation.cloud_cooldown_s,
    )
    try:
        return cache.fetch(client, users, histories)
    finally:
        client.close()


def _collaborative_inference(
    cfg: RunConfig,
    node: NodeData,
    cache: ListCache,
    personal: SequentialRecommender,
    stage: Stage,
    alphas: np.ndarray,
    live: str,
    tau: float,
    gate_bins: int,
    seed: int,
) -> tuple[dict[str, StageOutcome], int]:
    """Stale list (held since the cloud last saw the user) for every user, fresh list (a request) for those who ask.

    Fallbacks: a stale list the cloud never delivered is the SRM's own (:func:`_stale_lists`); a fresh list
    that cannot be had is the stale list again. The gate reads the ``live`` signal against ``tau``, calibrated on
    ``gate_bins`` bins; ``seed`` seeds its coin flips. With ``federation.fresh_lists = gated`` only the users
    the gate sends ask the cloud (:func:`_asking`); the others' fresh list is their stale one, so the fresh
    sums are what the fleet served under its gate.

    Returns the outcomes, and how many device views were sent to the cloud: those asked for whose list the
    node did not hold already (a user asked again for the same view is served the list it holds), in the
    requests the node made (``CloudClient.posted``: none while the service is skipped after an outage).
    """
    fed = cfg.federation
    device, cloud, targets = node.views(stage)
    stale = _stale_lists(cfg, node, cache, personal, device, cloud)
    asks, live_signal = _asking(cfg, personal, stage, device, cloud, stale, live, tau, gate_bins, seed)
    rows = np.flatnonzero(asks)
    posted = cache.sent
    got = _fetch(cfg, node, cache, [int(node.users[r]) for r in rows], [device[r] for r in rows])
    fresh_items, fresh_scores = stale.items.copy(), stale.scores.copy()
    kept = rows[~got.missing]  # a fresh list that cannot be had stays the stale one
    fresh_items[kept], fresh_scores[kept] = got.items[~got.missing], got.scores[~got.missing]
    counted = asks if fed.fresh_lists == "gated" else None  # with all, everyone fetched: the gate only counts
    outcomes = collaborative_inference(
        personal,
        device,
        cloud,
        torch.from_numpy(stale.items),
        torch.from_numpy(stale.scores),
        torch.from_numpy(fresh_items),
        torch.from_numpy(fresh_scores),
        targets,
        alphas,
        fed.bins,
        fed.measures,
        cfg.srm.max_len,
        tau=tau,
        live=live,
        norm=fed.norm,
        seed=seed,
        gate_bins=gate_bins,
        asked=counted,
        live_signal=live_signal,
    )
    return outcomes, cache.sent - posted


def _asking(
    cfg: RunConfig,
    personal: SequentialRecommender,
    stage: Stage,
    device: list[np.ndarray],
    cloud: list[np.ndarray],
    stale: CandidateLists,
    live: str,
    tau: float,
    gate_bins: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Which users ask the cloud for a fresh list [B] (all, or those the live gate sends), and the signal read.

    The live signal read to draw the gate [B] (``None`` where none was drawn) is binned by the evaluation
    rather than read again. Every one with ``federation.fresh_lists = all``, so that the report can compare every request policy on
    the same users. With ``gated`` only those the live gate sends at test, as a deployment would (the mask is
    what :func:`clients.inference.collaborative_inference` then counts as requests); at validation none, whose
    fresh lists nothing in a gated run reads (α is chosen on the stale list, the signal is named) and whose
    device views would reach the cloud uncounted.
    """
    if cfg.federation.fresh_lists == "all":
        return np.ones(len(device), bool), None
    if stage == "valid":
        return np.zeros(len(device), bool), None
    score = _held_signal(cfg, personal, device, cloud, stale, live)
    return seeded_gate(score, tau, gate_bins, seed), score


def _held_signal(
    cfg: RunConfig,
    personal: SequentialRecommender,
    device: list[np.ndarray],
    cloud: list[np.ndarray],
    stale: CandidateLists,
    measure: str,
) -> np.ndarray:
    """The request signal ``measure`` [B] of the stale lists the node's users hold (label-free)."""
    items, scores = torch.from_numpy(stale.items), torch.from_numpy(stale.scores)
    return held_list_signal(personal, device, cloud, items, scores, measure, cfg.srm.max_len)


def _stale_lists(
    cfg: RunConfig,
    node: NodeData,
    cache: ListCache,
    personal: SequentialRecommender,
    device: list[np.ndarray],
    cloud: list[np.ndarray],
) -> CandidateLists:
    """The lists the node's users hold, made by the cloud from its stale views ``cloud``.

    A list the cloud never delivered is replaced by the SRM's own top-K over the catalogue from the device
    view ``device``, its SRM scores standing in for the LLM's: fusion then ranks it in the SRM's order at every
    α, α = 1 included (flat scores there would tie the whole list, and a tie ranks the target last).
    """
    stale = _fetch(cfg, node, cache, [int(u) for u in node.users], cloud)
    if stale.missing.any():
        rows = np.flatnonzero(stale.missing)
        scores = catalogue_scores(personal, [device[r] for r in rows], cfg.srm.max_len)
        # a catalogue smaller than K fills part of each row, as the cloud's lists do
        k = min(cfg.llm.k, scores.shape[1])
        top = torch.topk(scores, k, dim=1)
        stale.items[rows, :k], stale.scores[rows, :k] = top.indices.numpy(), top.values.numpy()
    return stale


def _full_catalogue_ndcg_sum(model: SequentialRecommender, node: NodeData, stage: Stage) -> float:
    """Sum over the node's users of full-catalogue NDCG@10 (the centralized baseline's protocol)."""
    device, _, targets = node.views(stage)
    ranks = full_catalogue_ranks(model, device, targets, model.config.max_len)
    return metrics_from_ranks(ranks, cutoffs=(10,))["ndcg@10"] * len(ranks)
