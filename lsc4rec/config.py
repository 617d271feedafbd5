"""One typed run configuration: code defaults < TOML file < ``--set key=value`` overrides.

Every component reads its own sub-config from this tree; Flower's ``run_config`` (a flat mapping with dotted
keys such as ``"srm.hidden"``) is read once into the same tree with :meth:`RunConfig.from_flat`. An unknown key
is an error that names it. The effective config is written into every run folder and LLM checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsc4rec.errors import ConfigError, DataFormatError
from lsc4rec.protocol import DEFAULT_PORT, MAX_K

# Request signals a device can gate on (lsc4rec.ranking, clients.inference); "auto" evaluates them all and lets
# the fleet's validation pick one (strategies.budget).
MEASURES = ("drift", "displacement", "kendall", "topk", "confidence")
# The server learning rate each strategy takes when ``federation.server_lr`` is 0: FedAdam's η (the value this
# project used before it was configurable) and FedAvgM's step (1.0: the averaged update, plus momentum; with no
# momentum, plain FedAvg).
SERVER_LR = {"fedadam": 0.01, "fedavgm": 1.0}
# federation.bins x (alpha_steps + 1): it bounds each evaluation reply's [α, bin] sums (four such arrays per signal)
MAX_BIN_ALPHA_SUMS = 2000
# score normalisations before fusion (lsc4rec.ranking.normalize)
NORMALIZATIONS = ("minmax", "softmax", "rank")
# who asks the cloud for a fresh list at evaluation (FederationConfig.fresh_lists)
FRESH_LISTS = ("all", "gated")
# the signals read from the SRM's scores of the whole catalogue (clients.inference.catalogue_signals); the
# others compare the LLM's and the SRM's orders of the list (lsc4rec.ranking.disagreement)
CATALOGUE_SIGNALS = ("drift", "confidence")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how it is filtered and numbered, and the temporal protocol (DESIGN.md section 2)."""

    dataset: str = "ml-latest-small"  # ml-latest-small | beauty | toys | a path to a file or folder
    data_dir: str = ""  # root of the raw data; empty: $LSC4REC_DATA_DIR, else the per-user cache
    kcore: int = 5  # keep users and items with at least this many interactions (iterated to a fixpoint)
    numbering: str = "random"  # random | sequential; P5's own ids leak order, so random is the default
    lag: int = 2  # interactions the cloud has not yet seen at serving time (the paper's dcc_t2)

    def __post_init__(self) -> None:
        _check(self.dataset.strip() != "", "data.dataset", "must name a dataset or a path", self.dataset)
        _check(self.kcore >= 1, "data.kcore", "must be >= 1", self.kcore)
        _check(
            self.numbering in ("random", "sequential"),
            "data.numbering",
            "must be random|sequential",
            self.numbering,
        )
        _check(self.lag >= 0, "data.lag", "must be >= 0", self.lag)


@dataclass(frozen=True)
class SRMConfig:
    """Small recommendation model (clients/srm): architecture and loss."""

    model: str = "sasrec"  # sasrec | gru4rec | din
    hidden: int = 64  # D, embedding and hidden size
    layers: int = 2  # transformer blocks (SASRec), GRU layers (GRU4Rec) or MLP layers (DIN)
    heads: int = 1  # attention heads (SASRec)
    dropout: float = 0.2  # dropout on embeddings and blocks
    max_len: int = 50  # T, positions the model can read (SASRec's positional table)
    # ce: softmax cross-entropy (full, or sampled when num_negatives > 0); bce: SASRec's loss
    loss: str = "ce"
    num_negatives: int = (
        0  # ce: 0 = full softmax (DIN: 100 sampled), else shared negatives; bce: per positive
    )

    def __post_init__(self) -> None:
        _check(
            self.model in ("sasrec", "gru4rec", "din"), "srm.model", "must be sasrec|gru4rec|din", self.model
        )
        _check(self.loss in ("ce", "bce"), "srm.loss", "must be ce|bce", self.loss)
        _check(self.heads >= 1, "srm.heads", "must be >= 1", self.heads)
        _check(
            self.hidden >= 1 and self.hidden % self.heads == 0,
            "srm.hidden",
            "must be positive and divisible by srm.heads",
            self.hidden,
        )
        _check(0.0 <= self.dropout < 1.0, "srm.dropout", "must be in [0, 1)", self.dropout)
        _check(self.layers >= 1, "srm.layers", "must be >= 1", self.layers)
        _check(self.max_len >= 1, "srm.max_len", "must be >= 1", self.max_len)
        _check(self.num_negatives >= 0, "srm.num_negatives", "must be >= 0", self.num_negatives)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the centralized SRM (``lsc4rec srm train``); devices train by ``federation.local_*``."""

    epochs: int = 200  # upper bound; early stopping on validation NDCG@10 usually ends sooner
    batch_size: int = 128  # sequences per step
    lr: float = 5e-3  # Adam learning rate (1e-3 converged several times slower on Beauty and ML)
    weight_decay: float = 0.0  # Adam weight decay
    patience: int = 5  # evaluations without validation improvement before stopping
    eval_every: int = 1  # epochs between validation evaluations
    max_minutes: float = 0.0  # wall-clock cap on training (0 = none)
    eval_users: int = 0  # evaluate on a seeded sample of this many users (0 = all); for costly scorers (DIN)

    def __post_init__(self) -> None:
        _check_schedule("train", self)
        _check(self.eval_every >= 1, "train.eval_every", "must be >= 1", self.eval_every)
        _check(self.eval_users >= 0, "train.eval_users", "must be >= 0 (0: all)", self.eval_users)


@dataclass(frozen=True)
class LLMConfig:
    """The cloud's item-token LLM (llm_cloud): how it is built, trained and served."""

    base: str = "scratch"  # scratch | path to a Hugging Face causal-LM folder or a .gguf file
    template: str = "items"  # items: item tokens only | titles: titles interleaved with item tokens
    hidden: int = 128  # scratch: hidden size (head_dim = hidden / heads must be 64 for vLLM's CPU attention)
    layers: int = 2  # scratch: decoder layers
    heads: int = 2  # scratch: attention heads
    dropout: float = 0.1  # dropout on token embeddings (every base) and attention weights (scratch)
    max_len: int = 50  # newest history items put into a prompt
    # upper bound, about 3 minutes on 2 cores for MovieLens. The MovieLens recipe (these defaults: no
    # context-free targets, the last 4 epochs averaged, patience 3 within 20 epochs) was chosen on validation over
    # five seeds: stale NDCG@10 0.0482, against 0.0435 with context-free targets, no averaging and patience 5, and
    # 0.0320 for those with patience 3 within 50, which stopped at epochs 6 to 12 (BENCHMARKS.md, "The default
    # LLM's recipe" and the section before it)
    epochs: int = 20
    batch_size: int = 64  # sequences per step
    lr: float = 2e-3  # AdamW learning rate (scratch); LoRA runs usually want about 2e-4
    patience: int = 3  # epochs without validation improvement before stopping
    # after early stopping (and max_minutes): epochs on the whole cloud view, its held-out newest item included.
    # 0 by default: a refit LLM has trained on the last item of every validation query, so validation flatters
    # it (MovieLens: stale NDCG@10 0.0465 on validation, 0.0292 on test; 0.0372 and 0.0356 without) and every
    # choice made there (fusion α, request signal, settings) leans on the LLM (BENCHMARKS.md)
    refit_epochs: int = 0
    weight_decay: float = 0.0  # AdamW weight decay
    label_smoothing: float = 0.0  # cross-entropy label smoothing over the item tokens
    # each position's loss covers its next target_window items; 0 takes ℓ + 1 (data.lag + 1): the stale list
    # is read ℓ + 1 interactions past the cloud's history, so items that far ahead are what it must contain
    # (1: next item only; BENCHMARKS.md compares them)
    target_window: int = 0
    # false: no loss on what a training window's first position (the prompt prefix, no item yet) predicts; a
    # served history is never empty, so those predictions only teach popularity (P5 Beauty's recipe keeps them)
    context_free_targets: bool = False
    # > 1: when training stops, average the last average_epochs epochs' weights (stochastic weight averaging) and
    # keep the average if validation prefers it to the best epoch; 0 keeps the best epoch. Holds that many copies of
    # the weights in memory: meant for the scratch model (a pretrained base wants 0: SmolLM2-135M is 0.5 GB a copy)
    average_epochs: int = 4
    max_minutes: float = 5.0  # wall-clock cap on training (0 = none); the best epoch so far is kept
    lora_r: int = 16  # pretrained base: LoRA rank
    lora_alpha: int = 32  # pretrained base: LoRA scaling numerator
    k: int = 50  # candidate list length K the cloud returns

    def __post_init__(self) -> None:
        _check(
            bool(self.base.strip()),
            "llm.base",
            "must be scratch, or a Hugging Face model folder or .gguf file",
            self.base,
        )
        _check(self.template in ("items", "titles"), "llm.template", "must be items|titles", self.template)
        _check(
            self.base != "scratch" or self.template == "items",
            "llm.template",
            "must be items for the scratch model (it has no text vocabulary; titles need a pretrained llm.base)",
            self.template,
        )
        _check(1 <= self.k <= MAX_K, "llm.k", f"must be in [1, {MAX_K}] (the service's limit)", self.k)
        _check(self.target_window >= 0, "llm.target_window", "must be >= 0", self.target_window)
        _check(self.refit_epochs >= 0, "llm.refit_epochs", "must be >= 0", self.refit_epochs)
        _check(self.average_epochs >= 0, "llm.average_epochs", "must be >= 0", self.average_epochs)
        _check_schedule("llm", self)
        _check(self.layers >= 1, "llm.layers", "must be >= 1", self.layers)
        _check(self.max_len >= 1, "llm.max_len", "must be >= 1", self.max_len)
        _check(self.lora_r >= 1, "llm.lora_r", "must be >= 1", self.lora_r)
        _check(self.lora_alpha >= 1, "llm.lora_alpha", "must be >= 1", self.lora_alpha)
        _check(self.heads >= 1, "llm.heads", "must be >= 1", self.heads)
        _check(
            self.hidden >= 1 and self.hidden % self.heads == 0,
            "llm.hidden",
            "must be positive and divisible by llm.heads (vLLM's CPU attention wants head_dim 64)",
            self.hidden,
        )
        _check(0.0 <= self.dropout < 1.0, "llm.dropout", "must be in [0, 1)", self.dropout)
        _check(
            0.0 <= self.label_smoothing < 1.0,
            "llm.label_smoothing",
            "must be in [0, 1)",
            self.label_smoothing,
        )


@dataclass(frozen=True)
class FederationConfig:
    """The Flower federation: nodes, rounds, local training, the request budget and the cloud service."""

    num_nodes: int = 0  # 0: one user per node (devices); N: N edge boxes holding several users each
    rounds: int = 10  # server rounds (each: train on a sample of nodes, evaluate on a sample)
    fraction_train: float = 0.2  # share of nodes sampled for training each round
    fraction_evaluate: float = 0.1  # share of nodes sampled for the per-round validation
    strategy: str = "fedavg"  # fedavg | fedprox | fedadam | fedavgm (Flower's own strategies)
    proximal_mu: float = 0.0  # FedProx μ (used by fedprox; 0 disables the proximal term)
    # server learning rate: FedAdam's η, FedAvgM's step on the averaged update; 0 takes the strategy's usual
    # value (SERVER_LR, see ``effective_server_lr``); FedAdam's moments and FedAvgM's momentum live in server
    # memory, so a resumed run starts them afresh
    server_lr: float = 0.0
    server_momentum: float = 0.0  # FedAvgM's server momentum β
    max_update_norm: float = 0.0  # reject updates with ||w_node - w_global|| above this (0: no bound)
    local_epochs: int = 5  # passes over the node's sequences per round (a device holds only a few)
    local_batch_size: int = 32  # sequences per local step
    local_lr: float = 5e-3  # local Adam learning rate (1e-3 barely moved the SRM)
    # keep each node's Adam state between rounds (edge boxes; costs 2x the SRM's size per node, so off for
    # one-user devices, which train a few times per run; held in memory, so a resumed run starts it afresh)
    keep_optimizer: bool = False
    # average each item-embedding row over the nodes weighted by how often their data holds the item, not by
    # their example counts (strategies/item_rows.py): the nodes then tell the server which items they hold,
    # so it is for edge boxes of many users; on Beauty it lifted the federated SRM to central quality
    item_weighted: bool = False
    collab_prefixes: int = 3  # newest training prefixes per user trained against the LLM's list (0: none)
    # weight of the listwise term "target above the LLM's candidates" (the candidates are good items, so a
    # large weight costs the SRM full-catalogue quality; on Beauty even 0.1 did, BENCHMARKS.md). Chosen on the
    # default run's validation among 0.1, 0.05 and 0.02 (BENCHMARKS.md, "The collaborative term's weight")
    collab_weight: float = 0.02
    adapt_steps: int = 5  # adaptive re-training: steps of the personal copy on the newest interactions
    adapt_lr: float = 5e-4  # adaptive re-training learning rate
    # each node keeps its adapted personal copy in its state after an evaluation, as a device that serves its
    # user until the next one does; a simulation holds every node's state, so false saves one SRM per node
    # (about 0.5 GiB of the default run's 3.5 GiB; BENCHMARKS.md) with the same report
    keep_personal: bool = True
    budget: float = 0.05  # target fleet request rate the server calibrates the gate to
    bins: int = 50  # bins of the request-signal histograms the nodes report
    # evaluate rounds the live gate's τ and signal are calibrated on, newest last: one round's sample is small
    # (61 users in the default run), older rounds describe an SRM that has trained since; 2 came closest to the
    # budget over three seeds' label-free histograms (strategies/budget.py; BENCHMARKS.md, "The live gate's window")
    budget_window: int = 2
    # request signal: drift (how far the interactions the cloud has not seen moved the SRM's own top-K over the
    # catalogue) | the LLM-vs-SRM orders of the list: displacement (after the paper's) | kendall | topk (top-10
    # overlap) | confidence (how sure the SRM is of its own top item) | auto: nodes evaluate every signal and
    # the server gates on the one that beats random requests by most on validation, summed over the budget,
    # its double and its quadruple (lsc4rec.outcomes.choose_measure; which one wins depends on the SRM)
    measure: str = "auto"
    # who asks the cloud for a fresh list at evaluation: all (every evaluated user, whatever the gate decides,
    # so that the report compares every request policy on the same users) | gated (only the users the live gate
    # sends at test, as a deployment that keeps its fresh items from the cloud would; the report then has two
    # policies, nobody asking and the live gate, and needs one named request signal, not auto; README, "Keeping
    # the devices' fresh items from the cloud")
    fresh_lists: str = "all"
    norm: str = "minmax"  # score normalisation before fusion: minmax | softmax | rank
    alpha_steps: int = 10  # fusion weights α searched on validation: 0, 1/steps, ..., 1
    # validation's best α is served only where it beats the better single model (SRM-only or LLM-only) by more
    # than this many paired standard errors, else that model is: a blend picked from noise can serve users
    # worse than either model (the one-standard-error rule; lsc4rec.outcomes.StageOutcome.chosen_alpha). 0
    # serves validation's best α, as runs before 2026-12-07 did
    alpha_margin_se: float = 1.0
    # the candidate service (`lsc4rec llm serve` on this host)
    service_url: str = f"http://127.0.0.1:{DEFAULT_PORT}"
    timeout_s: float = 20.0  # per HTTP request to the service: the whole answer, not each read
    retries: int = 2  # retries after a failed request (exponential back-off) before falling back
    # seconds a device process skips a service that failed every attempt, then probes it once; 0 never skips
    cloud_cooldown_s: float = 60.0
    client_threads: int = 1  # torch threads per node: device models are tiny, and many nodes share few cores
    # user-level differential privacy of the global SRM (Flower's central DP, server-side fixed clipping;
    # strategies/privacy.py): each node's update is clipped to dp_clip, the round's mean over the nodes (equal
    # weights) gets Gaussian noise of std dp_noise·dp_clip/nodes sampled, and an RDP accountant reports ε at
    # dp_delta. 0 turns it off. Needs strategy fedavg|fedprox, item_weighted off and max_update_norm 0.
    dp_noise: float = 0.0
    # L2 bound of one node's update (a run's train-update-norm-median in metrics.jsonl is the usual choice)
    dp_clip: float = 1.0
    dp_delta: float = 1e-5  # δ of the reported (ε, δ); keep it well below 1 / nodes
    run_dir: str = ""  # the run folder (checkpoints, report); set by server/launch.py
    resume: bool = False  # continue from the newest checkpoint in run_dir

    def __post_init__(self) -> None:
        _check(self.num_nodes >= 0, "federation.num_nodes", "must be >= 0", self.num_nodes)
        _check(
            0.0 < self.fraction_train <= 1.0,
            "federation.fraction_train",
            "must be in (0, 1]",
            self.fraction_train,
        )
        _check(
            0.0 <= self.fraction_evaluate <= 1.0,
            "federation.fraction_evaluate",
            "must be in [0, 1]",
            self.fraction_evaluate,
        )
        self._check_strategy()
        _check(0.0 <= self.budget <= 1.0, "federation.budget", "must be in [0, 1]", self.budget)
        _check(
            self.measure in (*MEASURES, "auto"),
            "federation.measure",
            "must be " + "|".join((*MEASURES, "auto")),
            self.measure,
        )
        _check(
            self.fresh_lists in FRESH_LISTS,
            "federation.fresh_lists",
            "must be " + "|".join(FRESH_LISTS),
            self.fresh_lists,
        )
        _check(
            self.fresh_lists == "all" or self.measure != "auto",
            "federation.measure",
            "must name one request signal with fresh_lists = gated (auto chooses by comparing every user's fresh "
            "list, which a gated fleet does not fetch), such as confidence",
            self.measure,
        )
        _check(
            self.norm in NORMALIZATIONS,
            "federation.norm",
            "must be " + "|".join(NORMALIZATIONS),
            self.norm,
        )
        _check(self.collab_weight >= 0, "federation.collab_weight", "must be >= 0", self.collab_weight)
        for key, value in (
            ("proximal_mu", self.proximal_mu),
            ("max_update_norm", self.max_update_norm),
            ("collab_prefixes", self.collab_prefixes),
            ("adapt_steps", self.adapt_steps),
            ("adapt_lr", self.adapt_lr),
            ("retries", self.retries),
            ("cloud_cooldown_s", self.cloud_cooldown_s),
        ):
            _check(value >= 0, f"federation.{key}", "must be >= 0", value)
        for key, value in (
            ("local_epochs", self.local_epochs),
            ("local_batch_size", self.local_batch_size),
            ("bins", self.bins),
            ("budget_window", self.budget_window),
            ("client_threads", self.client_threads),
        ):
            _check(value >= 1, f"federation.{key}", "must be >= 1", value)
        _check(self.local_lr > 0, "federation.local_lr", "must be > 0", self.local_lr)
        _check(self.timeout_s > 0, "federation.timeout_s", "must be > 0", self.timeout_s)
        _check(self.alpha_steps >= 1, "federation.alpha_steps", "must be >= 1", self.alpha_steps)
        _check(self.alpha_margin_se >= 0, "federation.alpha_margin_se", "must be >= 0", self.alpha_margin_se)
        # each node's evaluation reply holds, per signal and stage, two sums per α for each bin: 50 bins and 11
        # α by default (about 0.4 MiB a node); a product 4 times that keeps the replies a round holds until its last
        # near 1 GiB for 610 nodes sampled (a simulation sums the final questions' replies as they come)
        alphas = self.alpha_steps + 1
        _check(
            self.bins * alphas <= MAX_BIN_ALPHA_SUMS,
            "federation.bins",
            f"must be at most {MAX_BIN_ALPHA_SUMS // alphas} with federation.alpha_steps={self.alpha_steps} (bins "
            f"times its {alphas} α values may be at most {MAX_BIN_ALPHA_SUMS}: each node's evaluation reply holds "
            "four arrays of that many sums per signal)",
            self.bins,
        )
        _check(self.rounds >= 1, "federation.rounds", "must be >= 1", self.rounds)
        self._check_privacy()

    def _check_strategy(self) -> None:
        """The strategy, and that each strategy's own settings go to that strategy only."""
        _check(
            self.strategy in ("fedavg", "fedprox", "fedadam", "fedavgm"),
            "federation.strategy",
            "must be fedavg|fedprox|fedadam|fedavgm",
            self.strategy,
        )
        _check(self.server_lr >= 0, "federation.server_lr", "must be >= 0", self.server_lr)
        # a strategy's own setting given to another strategy would be ignored without a word
        for key, value, users in (
            ("proximal_mu", self.proximal_mu, ("fedprox",)),
            ("server_lr", self.server_lr, ("fedadam", "fedavgm")),
            ("server_momentum", self.server_momentum, ("fedavgm",)),
        ):
            _check(
                value == 0 or self.strategy in users,
                f"federation.{key}",
                f"is used only by federation.strategy={'|'.join(users)} (this run's is {self.strategy}): set "
                "that strategy, or leave it at 0",
                value,
            )
        _check(
            0.0 <= self.server_momentum < 1.0,
            "federation.server_momentum",
            "must be in [0, 1)",
            self.server_momentum,
        )

    def _check_privacy(self) -> None:
        """Differential privacy's settings, and what a private run cannot combine with them."""
        _check(
            self.dp_noise >= 0,
            "federation.dp_noise",
            "must be >= 0 (0: no differential privacy)",
            self.dp_noise,
        )
        _check(self.dp_clip > 0, "federation.dp_clip", "must be > 0", self.dp_clip)
        _check(0 < self.dp_delta < 1, "federation.dp_delta", "must be in (0, 1)", self.dp_delta)
        if self.private:  # the accountant's guarantee holds only for a uniform mean of clipped updates
            _check(
                self.strategy in ("fedavg", "fedprox"),
                "federation.strategy",
                "must be fedavg|fedprox with federation.dp_noise > 0 (the noise is calibrated to a plain mean)",
                self.strategy,
            )
            _check(
                not self.item_weighted,
                "federation.item_weighted",
                "must be false with federation.dp_noise > 0 (item counts would leave the node unprotected)",
                self.item_weighted,
            )
            _check(
                self.max_update_norm == 0,
                "federation.max_update_norm",
                "must be 0 with federation.dp_noise > 0 (clipping bounds updates; a rejection would depend on "
                "one node's data)",
                self.max_update_norm,
            )
        else:  # a clip or δ given without noise would leave the run unprotected without a word
            for key in ("dp_clip", "dp_delta"):
                value, default = getattr(self, key), FederationConfig.__dataclass_fields__[key].default
                _check(
                    value == default,
                    f"federation.{key}",
                    f"is used only with federation.dp_noise > 0 (this run's is {self.dp_noise:g}): set the "
                    f"noise multiplier too, or leave it at {default:g}",
                    value,
                )

    @property
    def private(self) -> bool:
        """Whether the global SRM is released with differential privacy (``dp_noise`` > 0)."""
        return self.dp_noise > 0

    @property
    def alphas(self) -> tuple[float, ...]:
        """The fusion weights α validation chooses from: 0, 1/steps, ..., 1 (as ``np.linspace`` spaces them)."""
        step = 1.0 / self.alpha_steps
        return (*(i * step for i in range(self.alpha_steps)), 1.0)

    @property
    def effective_server_lr(self) -> float:
        """The server learning rate the strategy runs with: ``server_lr``, or the strategy's usual one when 0."""
        return self.server_lr or SERVER_LR.get(self.strategy, 0.0)

    @property
    def measures(self) -> tuple[str, ...]:
        """The request signals the nodes evaluate: all of them for ``auto``, else the configured one."""
        return MEASURES if self.measure == "auto" else (self.measure,)


# settings added after runs had been made under another value than their default: a saved config without one was
# written before it existed, and reads as the value its run behaved by, so that a run resumed, or its report
# computed again, goes on by the rule its earlier rounds used
PREDATED = {"federation.alpha_margin_se": 0.0}  # validation's best α was served (before 2026-12-07)


@dataclass(frozen=True)
class RunConfig:
    """The whole run: seed, output folder, and one sub-config per component."""

    seed: int = 0  # seeds numpy, torch and every sampler
    out_dir: str = "runs"  # run folders are created below this directory
    data: DataConfig = field(default_factory=DataConfig)
    srm: SRMConfig = field(default_factory=SRMConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)

    def __post_init__(self) -> None:
        _check(0 <= self.seed < 2**32, "seed", "must be in [0, 2**32 - 1] (numpy's seed range)", self.seed)
        _check(bool(self.out_dir.strip()), "out_dir", "must name a folder (by default runs)", self.out_dir)

    @classmethod
    def from_flat(cls, flat: typing.Mapping[str, Any]) -> RunConfig:
        """Build from a flat mapping of dotted keys (Flower's ``run_config``, parsed ``--set`` pairs)."""
        return _replace_flat(cls(), dict(flat))

    def to_flat(self) -> dict[str, Any]:
        """Flatten to dotted keys, the form Flower's ``run_config`` and ``--set`` use."""
        return _flatten(dataclasses.asdict(self))

    def evaluation(self) -> dict[str, Any]:
        """The settings that fix an evaluation's users, item numbering and targets.

        Two figures compare only when these agree: a federated SRM and its central baseline, say.
        """
        data = self.data
        return {
            "dataset": data.dataset,
            "seed": self.seed,
            "kcore": data.kcore,
            "numbering": data.numbering,
            "lag": data.lag,
        }

    def override(self, pairs: typing.Iterable[str]) -> RunConfig:
        """Apply ``key=value`` strings (command-line ``--set``); values are parsed by the field's type."""
        return _replace_flat(self, _parse_pairs(pairs))

    def save(self, path: str | Path) -> None:
        """Write the effective config as JSON (into a run folder or checkpoint)."""
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a config written by :meth:`save`; a missing or damaged file is a DataFormatError naming it.

        A setting the file predates reads as :data:`PREDATED` says, not as today's default.
        """
        try:
            tree = json.loads(Path(path).read_text(encoding="utf-8"))
        except PermissionError as exc:  # whole, but not this user's to read
            raise DataFormatError(path, f"cannot be read ({exc.strerror}). Make it readable.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataFormatError(
                path,
                f"cannot be read as a run config ({exc}). Restore it from a copy of the run or checkpoint, "
                "or start a new one.",
            ) from None
        if not isinstance(tree, dict):
            raise DataFormatError(
                path, "must hold a JSON object of config sections (a run config written by lsc4rec)."
            )
        try:
            return cls.from_flat({**PREDATED, **_flatten(tree)})
        except ConfigError as exc:  # the file's, not the user's command line: say which file
            raise DataFormatError(
                path,
                f"holds a setting that is refused ({exc}). Fix it there, or write the file anew (train the "
                "checkpoint again, or start a new run).",
            ) from None


def load_config(path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> RunConfig:
    """Code defaults, then the TOML file at ``path`` (if any), then ``key=value`` overrides."""
    layers = _parse_pairs(overrides)
    if path is not None:
        try:
            table = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))  # a BOM is skipped
        except FileNotFoundError:
            raise ConfigError("--config", f"file {path} does not exist.") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("--config", f"{path} is not valid TOML in UTF-8 ({exc}).") from None
        except OSError as exc:
            raise ConfigError(
                "--config", f"must be a readable TOML file, got {path} ({exc.strerror})."
            ) from None
        layers = {**_flatten(table), **layers}
    # one step, so that rules across keys (llm.base with llm.template) see the merged settings
    return _replace_flat(RunConfig(), layers)


def set_key(pair: str) -> str:
    """The key of a ``--set key=value`` pair, as the commands that check their ``--set`` keys read it."""
    return pair.partition("=")[0].strip()


def override_pairs(
    overrides: typing.Iterable[str] | None, reads: typing.Collection[str] | None = None, **flat: object
) -> list[str]:
    """``--set`` pairs, then the named options that were given, as ``key=value`` strings.

    A setting given both ways is refused: which one wins is nothing a user should have to know. ``reads`` names
    the sections and keys the command reads (None: all); a ``--set`` outside them is refused, since
    the command would run as if it had not been given (``llm train --set federation.rounds=5``). Only ``--set``
    is held to it: a ``--config`` file may hold sections a command does not read, so that one file serves the
    commands of a run.
    """
    overrides = list(overrides or [])
    named = {key: value for key, value in flat.items() if value is not None}
    known = RunConfig().to_flat()
    for pair in overrides:
        key = set_key(pair)
        # a key that does not exist is left to load_config, which says so and lists the known ones
        if reads is not None and key in known and key not in reads and key.split(".", 1)[0] not in reads:
            sections = {name.split(".", 1)[0] for name in known if "." in name}
            read = ", ".join(f"{name}.*" if name in sections else name for name in reads)
            raise ConfigError(
                key,
                f"is not read by this command, which reads only {read}: drop it (it would have no effect), or "
                "pass it to the command that reads it.",
            )
        if key in named:
            raise ConfigError(
                key, f"is given twice, by --set {pair} and by its own option ({named[key]}). Pass it once."
            )
    return overrides + [f"{key}={value}" for key, value in named.items()]


def _parse_pairs(pairs: typing.Iterable[str]) -> dict[str, str]:
    """``key=value`` strings as a flat mapping (values stay strings until the field's type parses them)."""
    flat: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(pair, "an override must look like key=value, for example srm.hidden=64.")
        flat[key.strip()] = value.strip()
    return flat


def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(key, f"{rule}, got {value!r}.")


def _check_schedule(section: str, config: TrainConfig | LLMConfig) -> None:
    """The training schedule both the SRM's and the LLM's sections share."""
    for key, value, ok, rule in (
        ("epochs", config.epochs, config.epochs >= 1, "must be >= 1"),
        ("batch_size", config.batch_size, config.batch_size >= 1, "must be >= 1"),
        ("lr", config.lr, config.lr > 0, "must be > 0"),
        ("patience", config.patience, config.patience >= 1, "must be >= 1"),
        ("max_minutes", config.max_minutes, config.max_minutes >= 0, "must be >= 0 (0: no cap)"),
        ("weight_decay", config.weight_decay, config.weight_decay >= 0, "must be >= 0"),
    ):
        _check(ok, f"{section}.{key}", rule, value)


def _flatten(tree: typing.Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a TOML tree; a setting given twice (``"data.kcore" = 3`` and ``[data] kcore = 4``) is refused."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        # an empty table stays a value: `dataset = {}` must not vanish into the default
        nested = _flatten(value, f"{name}.") if isinstance(value, dict) and value else {name: value}
        for twice in nested.keys() & flat.keys():
            raise ConfigError(
                twice, "is set twice in the file (as a quoted dotted key and in its table): keep one."
            )
        flat.update(nested)
    return flat


def _replace_flat(obj: Any, flat: dict[str, Any], prefix: str = "") -> Any:
    """Return a copy of dataclass ``obj`` with the dotted keys in ``flat`` (relative to ``prefix``) set."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    changes: dict[str, Any] = {}
    mine = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
    for key in list(mine):
        head = key.split(".", 1)[0]
        if head not in fields:
            known = ", ".join(sorted(prefix + name for name in fields))
            raise ConfigError(prefix + key, f"is not a known key. Known keys here: {known}.")
        section = dataclasses.is_dataclass(getattr(obj, head))
        if section and head == key and mine[key] == {}:  # an empty [section] of a TOML file sets nothing
            del mine[key]
            continue
        if section and head == key:
            raise ConfigError(
                prefix + key, f"is a section: set one of its keys, e.g. {prefix}{head}.KEY=VALUE."
            )
        if not section and head != key:
            raise ConfigError(
                prefix + key, f"is not a known key: {prefix}{head} takes a value, not sub-keys."
            )
    for name in fields:
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            sub = {k: v for k, v in mine.items() if k.startswith(name + ".")}
            if sub:
                changes[name] = _replace_flat(
                    value, {prefix + k: v for k, v in sub.items()}, f"{prefix}{name}."
                )
        elif name in mine:
            changes[name] = _coerce(prefix + name, mine[name], hints[name])
    return dataclasses.replace(obj, **changes) if changes else obj


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` (from TOML, Flower or a command line string) to the field's declared type."""
    try:
        if hint is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                return bool(value)
            raise ValueError(value)
        # TOML and JSON keep booleans apart from numbers: `hidden = true` is a mistake, not 1; and a text
        # setting takes text: `out_dir = true` is not the folder "True"
        if (isinstance(value, bool) and hint is not str) or (hint is str and not isinstance(value, str)):
            raise ValueError(value)
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        converted = hint(value)
        if hint is float and not math.isfinite(converted):  # nan passes no rule, inf every lower bound
            raise ValueError(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
        kind = "a finite float" if hint is float else f"of type {hint.__name__}"
        raise ConfigError(key, f"must be {kind}, got {value!r}.") from None
    if hint is int and not -(2**63) <= converted < 2**63:  # Flower's run config carries 64-bit integers
        raise ConfigError(key, f"must fit in a 64-bit integer, got {value!r}.")
    return converted
