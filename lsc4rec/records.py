"""Keys of the Flower records devices and server exchange (kebab-case, defined once for both sides)."""

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict

from lsc4rec.outcomes import StageOutcome

ARRAYS = "arrays"  # ArrayRecord: the SRM weights (global in instructions, local in train replies)
ITEM_COUNTS = "item-counts"  # ArrayRecord of a train reply (federation.item_weighted): per-item counts
CONFIG = "config"  # ConfigRecord of an instruction
METRICS = "metrics"  # MetricRecord of a reply

NUM_EXAMPLES = "num-examples"  # weight of a reply in FedAvg: training sequences, or users evaluated
NODES = "nodes"  # 1 in every reply of a private run (federation.dp_noise): the equal weights of its mean
TRAIN_LOSS = "train-loss"  # mean local training loss of the last local epoch
FALLBACKS = "cloud-fallbacks"  # lists the node could not get from the cloud this round
SERVER_ROUND = "server-round"  # set by Flower's strategies in every instruction
PARTITION = "partition-id"  # node config (Flower's name) and query reply: the node's partition id (its users)
NUM_PARTITIONS = "num-partitions"  # node config (Flower's name) and query reply: partitions in the fleet
NODE_CONFIG_OPTION = "--node-config"  # the flower-supernode option that sets both

TAU = "request-tau"  # config sent to nodes, and metric: the threshold the nodes used this round
MEASURE = "request-signal"  # config sent to nodes: the request signal their gate reads this round
# node metric: test users the gate sent to the cloud (a signal above tau, or in tau's bin and won its coin flip)
REQUESTS = "requests"
# node metric: device views posted to the cloud for a fresh list, answered or not, at both stages; a list the
# node already holds for a view is served without a send (a gated fleet's is at most its requests; an `all`
# fleet's is every evaluated user's views not yet held)
FRESH_SENT = "fresh-views-sent"
USERS = "users"  # metric of the request budget's aggregate: the fleet's users under this round's tau
REALIZED_RATE = "realized-request-rate"  # metric: fleet requests / users under this round's tau
# metric: the tau calibrated from this round, sent with the next (a gated fleet's next is set on its sample)
NEXT_TAU = "next-request-tau"
NEXT_MEASURE = "next-request-signal"  # metrics.jsonl: the signal NEXT_TAU is a threshold of (auto may switch)
SIGNALS_ACTION = "signals"  # the query ("query.signals") for one request signal's test-time histogram
SIGNAL_COUNTS = "signal-bin-count"  # its reply: users per signal bin (GATE_BINS of them), label-free
GATE_BINS = (
    "gate-bins"  # config: the equal bins over [0, 1] tau was calibrated on (federation.bins if absent)
)

# Full-catalogue NDCG@10 sums over the node's test users, for holding the federated SRM against the central one.
GLOBAL_NDCG = "test-global-ndcg-sum"  # the global model, as received
PERSONAL_NDCG = "test-personal-ndcg-sum"  # the personal copy after adaptive re-training

# State kept on the node between rounds (context.state), never sent.
STATE_LISTS = "llm-lists"
STATE_OUTAGES = "cloud-outages"  # clients.cloud.Outages: a deployed node's process lasts one message
# federation.keep_personal: the adapted test-time copy a device serves its user with until the next evaluation,
# and what it was adapted from (a message that brings the same model serves the kept copy, not a new one)
STATE_PERSONAL = "personal-srm"
STATE_PERSONAL_OF = "personal-srm-of"
STATE_OPTIMIZER = "local-optimizer"  # federation.keep_optimizer: the local Adam state


def reply_metrics(content: RecordDict) -> MetricRecord:
    """A reply's one MetricRecord, whatever its name (Flower's strategies take the first, as here)."""
    return next(iter(content.metric_records.values()))


def unsound_reply(reply: Message) -> str | None:
    """Why an evaluation or signals reply's sums cannot be added, or None (an error reply too: callers count it).

    Everything such a reply holds is a sum, a count, an α or a bin edge: one NaN or negative count would spoil
    the fleet's sums (a NaN in a histogram crashed the gate's calibration, in the rounds and at the end).
    """
    if reply.has_error():
        return None
    for record in reply.content.metric_records.values():
        for key, value in record.items():
            values = np.asarray(value, dtype=float)
            if not (np.isfinite(values).all() and (values >= 0).all()):
                return f"node {reply.metadata.src_node_id} sent {key} not finite and >= 0"
    return None


def outcome_prefix(stage: str, measure: str) -> str:
    """Key prefix of a node's collaborative-inference outcome (``lsc4rec.outcomes``) per stage and signal."""
    return f"{stage}-{measure}"


def stage_outcomes(
    metrics: Mapping[str, object], stage: str, measures: Iterable[str]
) -> dict[str, StageOutcome]:
    """The ``stage``'s outcome under each of ``measures`` that ``metrics`` holds for at least one user.

    One reader for a node's reply and for the fleet's sums: a stage no user was evaluated in is absent.
    """
    return {
        m: StageOutcome.from_metrics(metrics, outcome_prefix(stage, m))
        for m in measures
        if float(metrics.get(f"{outcome_prefix(stage, m)}-users", 0)) > 0  # type: ignore[arg-type]
    }
