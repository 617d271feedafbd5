"""Training an SRM on item sequences: one epoch, and a fit loop with early stopping on validation.

The same code trains the centralized baseline (all users' device views) and a device's local model (its own
users, optionally with the LLM's candidate lists as hard negatives: collaborative training).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from clients.srm import SequentialRecommender
from lsc4rec.config import TrainConfig
from lsc4rec.data.batching import left_pad, length_bucketed_batches, next_item_batch
from lsc4rec.errors import check_loss
from lsc4rec.stopping import EarlyStopping

ValidFn = Callable[[SequentialRecommender], float]


def train_epoch(
    model: SequentialRecommender,
    sequences: Sequence[np.ndarray],
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    rng: np.random.Generator,
    hard_negatives: Sequence[np.ndarray] | None = None,
    proximal: Callable[[], torch.Tensor] | None = None,
    hard_weight: float = 1.0,
) -> float:
    """One pass over ``sequences`` in a seeded random order; returns the mean batch loss.

    A sequence trains every position (targets x_2 … x_m), unless ``hard_negatives[i]`` is non-empty: then it
    is a collaborative example that trains only its last position, against those extra negatives (the LLM's
    list for that prefix; that term weighted by ``hard_weight``, as ``SequentialRecommender.loss`` says) as well
    as the usual ones. ``proximal`` adds a penalty (FedProx's ``μ/2 ||w - w_global||²``) to every batch loss.
    """
    model.train()
    losses = []
    lengths = np.array([len(seq) for seq in sequences])
    usable = np.flatnonzero(lengths >= 2)  # a sequence of one item has no next-item target
    for batch in length_bucketed_batches(lengths[usable], batch_size, rng):
        index = usable[batch]
        batch = next_item_batch([sequences[i] for i in index], model.config.max_len)
        if hard_negatives is not None:
            lists = [hard_negatives[i] for i in index]
            batch["hard_negatives"] = left_pad(lists, max(1, *(len(h) for h in lists)))
            collaborative = torch.tensor([len(h) > 0 for h in lists])
            batch["target"][collaborative, :-1] = 0
        loss = model.loss(batch, hard_weight=hard_weight)
        if proximal is not None:
            loss = loss + proximal()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


def proximal_term(model: torch.nn.Module, mu: float) -> Callable[[], torch.Tensor]:
    """FedProx's ``μ/2 · ||w - w_global||²`` against the weights ``model`` holds now (the global model)."""
    anchor = [p.detach().clone() for p in model.parameters()]

    def penalty() -> torch.Tensor:
        return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))

    return penalty


def local_train(
    model: SequentialRecommender,
    sequences: Sequence[np.ndarray],
    hard_negatives: Sequence[np.ndarray] | None,
    epochs: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    seed: int,
    mu: float = 0.0,
    hard_weight: float = 1.0,
) -> float:
    """Train ``model`` in place for ``epochs`` local epochs with ``optimizer``; returns the last epoch's loss.

    ``mu > 0`` adds FedProx's proximal term towards the weights the model started from (the global model);
    ``hard_weight`` scales the collaborative hard-negative term (see :func:`train_epoch`). ``seed`` seeds the
    batch order and torch's draws (sampled negatives, dropout), so a node gets new ones with every round's seed;
    the global torch generator is left as it was.
    """
    proximal = proximal_term(model, mu) if mu > 0 else None
    rng = np.random.default_rng(seed)
    loss = float("nan")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            loss = train_epoch(
                model, sequences, optimizer, batch_size, rng, hard_negatives, proximal, hard_weight
            )
    return loss


def optimizer_arrays(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state (Adam: step, moments) as flat named tensors ``"<param>.<key>"``.

    An edge box keeps it in its node state between rounds, so that its next local epochs continue Adam's
    moment estimates instead of restarting them: a fresh Adam's first steps move every weight by about the
    learning rate whatever its gradient, noise that FedAvg then averages in (BENCHMARKS.md).
    """
    return {
        f"{index}.{key}": torch.as_tensor(value)
        for index, state in optimizer.state_dict()["state"].items()
        for key, value in state.items()
    }


def load_optimizer_arrays(optimizer: torch.optim.Optimizer, arrays: Mapping[str, torch.Tensor]) -> None:
    """Inverse of :func:`optimizer_arrays` into an optimizer over the same parameters (hyperparameters kept)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in arrays.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({**optimizer.state_dict(), "state": state})


def adapt(
    model: SequentialRecommender, sequences: Sequence[np.ndarray], steps: int, lr: float, seed: int
) -> SequentialRecommender:
    """Adaptive re-training: a personal copy of ``model`` fine-tuned for ``steps`` steps on ``sequences``.

    The device calls it with its newest interactions after receiving the global model; the global model
    itself is left untouched. ``steps = 0`` returns an unchanged copy. The copy depends on its arguments only
    (dropout draws from a generator seeded by ``seed``, the global one is left as it was), so the pass that
    calibrates the request gate and the evaluation after it adapt the same copy.
    """
    personal = copy.deepcopy(model)
    if steps > 0 and any(len(s) >= 2 for s in sequences):  # a step is one batch of all the sequences
        optimizer = torch.optim.Adam(personal.parameters(), lr=lr)
        local_train(personal, sequences, None, steps, len(sequences), optimizer, seed)
    personal.eval()
    return personal


@dataclass
class FitResult:
    """What :func:`fit` reports: the best validation score, its epoch, and the per-epoch history."""

    best_valid: float
    best_epoch: int
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def fit(
    model: SequentialRecommender,
    sequences: Sequence[np.ndarray],
    valid_fn: ValidFn,
    config: TrainConfig,
    seed: int,
    progress: bool = True,
) -> FitResult:
    """Train with Adam, validate every ``eval_every`` epochs, stop after ``patience`` evaluations without gain.

    The model ends holding the weights of its best validation epoch. ``valid_fn`` returns the score to
    maximise (validation NDCG@10 everywhere in this project), never a test figure.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(seed)
    stop = EarlyStopping(config.patience, config.max_minutes)
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    bar = tqdm(
        range(1, config.epochs + 1), desc=f"train {model.config.model}", disable=not progress, unit="ep"
    )
    epoch = 0
    for epoch in bar:
        loss = train_epoch(model, sequences, optimizer, config.batch_size, rng)
        check_loss(loss, "train", config.lr, epoch)
        record = {"epoch": epoch, "loss": loss, "seconds": stop.seconds}
        if epoch % config.eval_every == 0:
            record["valid_ndcg@10"] = score = valid_fn(model)
            if stop.update(score, epoch):
                best_state = copy.deepcopy(model.state_dict())
            bar.set_postfix(
                loss=f"{loss:.4f}", valid=f"{score:.4f}", best=f"{stop.best:.4f}@{stop.best_epoch}"
            )
        history.append(record)
        if stop.done:
            break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(float(stop.best), stop.best_epoch, epoch, stop.seconds, history)
