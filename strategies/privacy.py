"""User-level differential privacy of the global SRM: Flower's central DP wrapper, sized to each round's sample.

Flower's ``DifferentialPrivacyServerSideFixedClipping`` clips every node's update to ``clipping_norm``, takes
their mean with equal weights, adds Gaussian noise of std ``noise_multiplier · clipping_norm / n`` (n: the nodes
sampled) and composes one Gaussian release per round in an RDP accountant, with no credit for sampling a
fraction of the fleet. ``FleetPrivacy`` keeps its accounting and changes these things:

- n is the round's own sample (the nodes connected when it was drawn), not a number fixed at the start: Flower
  ends the run when the two differ, so an edge box going offline would. Who is connected does not depend on
  anyone's data, so the noise stays calibrated to the mean it is added to.
- the noise comes from a generator seeded by the operating system, not numpy's global one, which the run's seed
  fixes: noise that anyone holding the run config can reproduce protects nothing, and a resumed run, seeded
  again, would add the noise of its first rounds a second time. Private runs are therefore not bit-reproducible.
- updates are clipped array by array as named, and an update of norm 0 (a node that sent the global model back)
  is kept as it is: Flower pairs a reply's arrays with the global ones by position, which holds only while both
  list them in one order (the server puts a checkpoint's arrays back in the model's order), and its clipping
  divides by the norm; either would end the run.
- a reply whose weight is not the equal weight every node sends is a failed round, not a crash.

A round in which a sampled node fails or is rejected releases nothing (Flower's strict rule in accounted mode:
the mean of fewer updates would be less noisy than accounted for), so it composes no event. That the round was
void is not hidden, though: the model stays as it was and the round's metrics count the rejection, so a node
whose data make its training fail shows that much, outside ε. ``on_release`` hands the accountant's state to
the ServerApp the moment a model is released (its ledger, saved beside the checkpoints), so a resumed run goes
on composing from every release made, even one of a round that never reached its checkpoint.

The neighbouring relation ε is stated for is zero-out: two fleets differ in one node's data, replaced by data
that yield no update, the node still sampled. That is what sizing the noise to the clipped mean over the
round's n nodes (sensitivity C/n) covers. Flower's accountant names its relation add-or-remove, which for an
unsampled Gaussian release changes no figure. Replacing a node's data with any other data moves the mean by
up to 2C/n: for that relation, read the ε of noise multiplier z/2.

What this protects: the global SRM released each round, for any one node's data: a user's, on one-user devices;
a whole box's, on edge boxes (which covers each of its users). What it does not: the sums of evaluation metrics
and the request-signal histograms the nodes report, the mean training loss and example count of each round,
and what the cloud sees by design (the stale histories it makes lists from).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.serverapp.strategy.dp_fixed_clipping import validate_replies
from flwr.supercore.differential_privacy import compute_stdv, get_norm
from flwr.supercore.privacy_accounting import NeighboringRelation, PrivacyConfig, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant


class FleetPrivacy(DifferentialPrivacyServerSideFixedClipping):
    """Central DP with server-side fixed clipping around ``strategy``, accounted over a fleet of ``population``.

    Parameters
    ----------
    strategy
        The aggregator: Flower's FedAvg (or FedProx), weighting every reply equally (its ``weighted_by_key``
        names a metric that is 1 in every reply).
    noise_multiplier, clipping_norm
        z and C: each update is clipped to L2 norm C, the mean gets noise of std z·C/n.
    population
        Nodes in the fleet (the accountant's population).
    delta
        δ of the (ε, δ) reported.
    state
        The accountant's state from a checkpoint (``state()``), to go on from; None starts at ε = 0.
    on_release
        Called with the accountant's state after each release, before the released model leaves the server.
    """

    def __init__(
        self,
        strategy: FedAvg,
        noise_multiplier: float,
        clipping_norm: float,
        population: int,
        delta: float,
        state: dict[str, object] | None = None,
        on_release: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=delta,
                population_size=population,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
        if state is not None:
            accountant.load_state_dict(state)
        super().__init__(strategy, noise_multiplier, clipping_norm, population, accountant=accountant)
        self._noise = np.random.default_rng()  # seeded by the OS, never by the run's seed (module docstring)
        self._on_release = on_release

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample through the inner strategy, size the noise and the round's privacy event to that sample."""
        self.current_arrays = arrays
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.num_sampled_clients = max(len(messages), 1)
        return self._prepare_accounting(server_round, messages)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip each update, take the inner strategy's equal-weight mean, add the noise, account the release."""
        replies = list(replies)
        event = self._pop_pending_event(server_round)
        if not validate_replies(replies, self.num_sampled_clients, strict=True):
            return None, None
        try:
            self._validate_uniform_weights(replies)
        except ValueError as exc:
            log(WARNING, "aggregate_train: round %d releases nothing: %s", server_round, exc)
            return None, None
        base = {key: array.numpy() for key, array in self.current_arrays.items()}
        for reply in replies:
            for name, record in list(reply.content.array_records.items()):
                reply.content[name] = _clipped(record, base, self.clipping_norm)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if arrays is None:
            return None, metrics
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        noised = {key: array.numpy() for key, array in arrays.items()}
        for value in noised.values():
            value += self._noise.normal(0.0, std, value.shape).astype(value.dtype)
        self._compose_release(event)
        if self._on_release is not None:
            self._on_release(self.state())
        return ArrayRecord({key: Array(value) for key, value in noised.items()}), metrics

    @property
    def epsilon(self) -> float:
        """ε spent so far, at the configured δ (0 before the first release)."""
        return self.accountant.get_privacy_spent().epsilon

    @property
    def releases(self) -> int:
        """Noised global models released so far (rounds that aggregated an update)."""
        return self.accountant.num_releases

    def state(self) -> dict[str, object]:
        """The accountant's JSON-serialisable state, for the round's checkpoint."""
        return self.accountant.state_dict()


def _clipped(record: ArrayRecord, base: dict[str, np.ndarray], bound: float) -> ArrayRecord:
    """``record`` moved back towards ``base`` so that its update has L2 norm at most ``bound`` (kept if 0).

    Arrays pair by name, not position: a safetensors file read back lists them by name, not as a node sends them.
    """
    update = {key: array.numpy() - base[key] for key, array in record.items()}
    norm = get_norm(list(update.values()))
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return ArrayRecord(
        {key: Array((base[key] + scale * u).astype(base[key].dtype)) for key, u in update.items()}
    )
