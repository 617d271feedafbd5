"""Training the item-token LM on the cloud view only (DESIGN.md section 2).

Targets are the items of ``split.llm_train_sequence(u)`` (x_1 … x_{n-3-ℓ}); the held-out newest item of the
cloud view at validation time, ``split.llm_valid_target(u)``, drives early stopping (NDCG@10 of the top-10 list
made from the training sequence, history items excluded, exactly as served). Neither x_{n-1}, x_n nor the
fresh window is ever a target. Users with short sequences contribute what they have.

Each position's loss covers its next ``llm.target_window`` items (ℓ + 1 by default, see ``sequence_loss``).

With ``llm.average_epochs = N`` the weights of the last N epochs are averaged when training stops (stochastic weight
averaging along the trajectory); the average replaces the best epoch only if validation prefers it.

After early stopping, ``llm.refit_epochs`` more epochs (none by default) can continue from the kept weights (the
best epoch's, or their average) on the whole cloud view at validation time (x_1 … x_{n-2-ℓ}), so that the model
also learns the newest interaction the cloud has seen. The price is the validation stage: its stale query ends on
that very item, which the model then has trained on, while a test query (and every query in service) ends on an
item it has not. Validation then flatters the LLM, and the fusion weight and request signal chosen there lean on
it (BENCHMARKS.md).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm
from transformers.utils import logging as hf_logging

from llm_cloud.evaluate import ranked_lists
from llm_cloud.model import ItemTokenLM, build_pretrained, build_scratch
from lsc4rec.config import LLMConfig, RunConfig
from lsc4rec.data import SequenceDataset, TemporalSplit
from lsc4rec.data.batching import length_bucketed_batches
from lsc4rec.errors import LSC4RecError, check_loss
from lsc4rec.metrics import list_ranks, metrics_from_ranks
from lsc4rec.runs import seed_everything
from lsc4rec.stopping import EarlyStopping

# Raised whenever a change to this module trains other weights from the same settings, so that the launcher's
# cached LLMs (keyed by it) are trained again rather than served as if the new code had made them.
# 2 (2026-12-07): without context-free targets, training windows overlap by one item (each window's first item
# had been no target at all).
TRAINING_RECIPE = 2

log = logging.getLogger(__name__)
TRAIN_LOG_FILE = "train_log.jsonl"
TRAIN_RESULT_FILE = "train_result.json"  # written last: a folder without it is an interrupted training


@dataclass
class TrainResult:
    """What training produced: where the checkpoint is and how validation went."""

    checkpoint: str
    best_epoch: int
    best_valid_ndcg10: float
    seconds: float
    target_window: int  # items each position learned (llm.target_window, with 0 resolved to ℓ + 1)
    averaged_epochs: int  # epochs whose weights the checkpoint averages (0: the best epoch's weights alone)
    epochs: list[dict[str, float]] = field(default_factory=list)
    recipe: int = TRAINING_RECIPE  # the training code's recipe version; a result without one predates it (1)


def kept_weights(best_epoch: int, averaged_epochs: int) -> str:
    """Which weights a checkpoint holds, in words: its validation score is theirs, not the best epoch's."""
    if averaged_epochs:
        return f"the last {averaged_epochs} epochs averaged (best single epoch {best_epoch})"
    return f"best epoch {best_epoch}"


def train_llm(
    config: RunConfig,
    dataset: SequenceDataset,
    out: str | Path,
    progress: bool = True,
    replace: bool = True,
) -> TrainResult:
    """Build the LM from ``config.llm``, train it on the cloud view of ``dataset`` and save it to ``out``.

    The checkpoint replaces ``out`` whole, whatever it held, once it is written in full (:func:`_put_in_place`);
    with ``replace=False`` only an empty ``out`` is, and a training that finds files there at the end (another
    training's, saved meanwhile) leaves its checkpoint beside it and says where.

    What is saved is the best epoch's weights, or the average of the last ``llm.average_epochs`` epochs' weights
    where validation prefers it, continued by ``llm.refit_epochs`` when set (see the module docstring).
    """
    stop = EarlyStopping(config.llm.patience, config.llm.max_minutes)  # its clock starts with the training
    seed_everything(config.seed)
    llm = config.llm
    split = TemporalSplit(dataset, config.data.lag)
    split.check_trainable("LLM")
    if llm.base == "scratch":
        lm = build_scratch(llm, dataset.num_items)
    else:
        lm = build_pretrained(llm, dataset.num_items, dataset.titles.tolist())
    _add_embedding_dropout(lm, llm.dropout)
    sequences = [split.llm_train_sequence(u) for u in range(split.num_users)]
    examples = training_examples(lm, sequences, llm.context_free_targets)
    valid_histories, valid_targets = validation_queries(split)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=llm.lr, weight_decay=llm.weight_decay)
    rng = np.random.default_rng(config.seed)
    window = llm.target_window or config.data.lag + 1
    log.info("each position learns its next %d items (llm.target_window)", window)
    best_state, epochs = None, []
    recent: deque[dict[str, torch.Tensor]] = deque(maxlen=llm.average_epochs)  # the last epochs' weights
    for epoch in range(1, llm.epochs + 1):
        loss = _train_epoch(lm, examples, optimizer, llm, window, rng, progress, epoch)
        check_loss(loss, "llm", llm.lr, epoch)
        valid = validation_ndcg10(lm, valid_histories, valid_targets, 4 * llm.batch_size)
        epochs.append({"epoch": epoch, "loss": loss, "valid_ndcg@10": valid, "seconds": stop.seconds})
        log.info("epoch %d: loss %.4f, valid NDCG@10 %.4f", epoch, loss, valid)
        improved = stop.update(valid, epoch)
        state = copy.deepcopy(lm.model.state_dict()) if llm.average_epochs or improved else None
        if llm.average_epochs:
            recent.append(state)
        if improved:
            best_state = state
        if stop.done:
            break
    best, averaged = stop.best, 0
    if len(recent) > 1:
        lm.model.load_state_dict(_average_states(recent))
        valid = validation_ndcg10(lm, valid_histories, valid_targets, 4 * llm.batch_size)
        epochs.append({"averaged_epochs": len(recent), "valid_ndcg@10": valid})
        log.info(
            "the last %d epochs averaged: valid NDCG@10 %.4f (best epoch %.4f)", len(recent), valid, best
        )
        if valid > best:
            best, best_state, averaged = valid, copy.deepcopy(lm.model.state_dict()), len(recent)
    lm.model.load_state_dict(best_state)
    if llm.refit_epochs > 0:
        views = [split.cloud_view(u, "valid") for u in range(split.num_users)]
        seen = training_examples(lm, views, llm.context_free_targets)
        for refit in range(1, llm.refit_epochs + 1):
            loss = _train_epoch(lm, seen, optimizer, llm, window, rng, progress, f"refit {refit}")
            check_loss(loss, "llm", llm.lr, f"refit {refit}")
            epochs.append({"refit": refit, "loss": loss, "seconds": stop.seconds})
            log.info("refit epoch %d on the whole cloud view: loss %.4f", refit, loss)
    lm.model.eval()
    result = TrainResult(str(out), stop.best_epoch, best, stop.seconds, window, averaged, epochs)
    _save(lm, config, dataset, result, Path(out), replace, progress)
    return result


def _save(
    lm: ItemTokenLM,
    config: RunConfig,
    dataset: SequenceDataset,
    result: TrainResult,
    out: Path,
    replace: bool,
    progress: bool,
) -> None:
    """Write the checkpoint, its epochs' log and its result beside ``out``, then move it in whole."""
    target = out.resolve()  # a link's folder is written, not the link replaced
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.partial")  # trainings may overlap
    try:
        with _transformers_bars(progress):  # "Writing model shards"
            lm.save_pretrained(staging, config, dataset.item_ids.tolist())
        (staging / TRAIN_LOG_FILE).write_text("".join(json.dumps(e) + "\n" for e in result.epochs))
        (staging / TRAIN_RESULT_FILE).write_text(json.dumps(asdict(result), indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # half a checkpoint is worth nothing
        raise
    _put_in_place(staging, target, replace)


def _put_in_place(staging: Path, out: Path, replace: bool = True) -> None:
    """Move the whole checkpoint ``staging`` to ``out``, replacing what ``out`` held (same file system: renames).

    Saving goes to a sibling folder first, so that a full disk or a Ctrl-C while the weights are written leaves an
    older checkpoint in ``out`` whole, never half replaced, and ``out`` never mixes two trainings' files. If the
    move itself fails, the older checkpoint goes back in its place and the new one is kept, named in the error.
    """
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    try:
        if not replace and os.path.lexists(out):
            os.rmdir(out)  # removes an empty folder only: files there are not this training's to replace
        if os.path.lexists(out):
            os.rename(out, old)
        try:
            os.rename(staging, out)
        except BaseException:
            if os.path.lexists(old):
                os.rename(old, out)
            raise
    except OSError as exc:
        raise LSC4RecError(
            f"the trained checkpoint could not be moved to {out} ({exc.strerror or exc}); it is whole in "
            f"{staging}: move that folder where you want it."
        ) from None
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _transformers_bars(enabled: bool) -> Iterator[None]:
    """Transformers' own progress bars follow ``progress`` too (its switch is process-wide: restored after)."""
    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def validation_queries(split: TemporalSplit) -> tuple[list[list[int]], np.ndarray]:
    """Early stopping's queries: each user's LLM training sequence as history, the cloud's held-out item as target.

    A user with the fewest interactions has an empty training sequence; the query is then the empty history,
    which the service itself never receives (its histories hold at least one item), and it scores the model's
    context-free prediction. Those users stay in: every LLM measured in BENCHMARKS.md was selected with them,
    and dropping them (as ``benchmarks/llm_quality.py`` must for its SASRec, which needs an item) would change
    which epoch is kept.
    """
    histories = [split.llm_train_sequence(u).tolist() for u in range(split.num_users)]
    return histories, np.array([split.llm_valid_target(u) for u in range(split.num_users)])


def training_examples(
    lm: ItemTokenLM, sequences: Sequence[np.ndarray], context_free: bool
) -> list[list[int]]:
    """Token-id prompts in which every item is a next-item target once: windows of ``max_len + 1`` items.

    Each window is a prompt of the template, so a target sees at most ``max_len`` items of context, as served.
    The windows end at the newest item and tile the sequence backwards. Without context-free targets
    (``context_free = False``, see :func:`sequence_loss`) a window's first item is context only, so each window
    starts on the last item of the one before it, where that item was a target.
    """
    width = lm.template.max_len + 1
    step = width if context_free else width - 1
    examples = []
    for seq in sequences:
        for end in range(len(seq), 0, -step):
            start = max(0, end - width)
            examples.append(lm.template.encode_all(seq[start:end].tolist()))
            if start == 0:
                break
    return examples


def sequence_loss(
    lm: ItemTokenLM, batch: list[list[int]], label_smoothing: float, window: int, context_free: bool
) -> torch.Tensor:
    """Mean cross-entropy over the item tokens of each of the next ``window`` items, at every item position.

    ``window = 1`` is the plain next-item loss. A wider window also asks each position for the items after the
    next one (a dense all-action loss, as in PinnerFormer): the cloud's list is read ℓ + 1 interactions after
    its history ends, so items a few steps ahead are what its candidates must contain.
    ``context_free = False`` drops the predictions made from the prompt prefix alone (a window's first
    position, before any item): no query asks for them, since a history is never empty.
    """
    width = max(len(ids) for ids in batch)
    ids = torch.full((len(batch), width), lm.template.pad_token, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        ids[row, : len(example)] = torch.tensor(example)
        mask[row, : len(example)] = 1
    hidden = lm.hidden_states(ids[:, :-1], mask[:, :-1])
    nxt = ids[:, 1:]
    first = lm.template.first_item_token
    labelled = mask[:, 1:].bool() & (nxt >= first) & (nxt < first + lm.num_items)
    log_probs = F.log_softmax(lm.item_logits(hidden[labelled]).float(), dim=-1)  # once for every offset
    smoothing = -log_probs.mean(dim=-1)  # cross-entropy against the uniform distribution, per position
    # Row-major order: position j's d-th next item is label j + d when it lies in the same row.
    labels, rows = nxt[labelled] - first, labelled.nonzero()[:, 0]
    keep = torch.ones_like(rows, dtype=torch.bool)  # [labelled]: positions whose predictions count
    if not context_free:
        keep[0] = False
        keep[1:] = rows[1:] == rows[:-1]  # a row's first labelled position has read no item yet
    total, count = log_probs.new_zeros(()), 0
    for d in range(min(window, len(labels))):
        index = ((rows[d:] == rows[: len(rows) - d]) & keep[: len(rows) - d]).nonzero()[:, 0]
        nll = -log_probs[index, labels[d:][index]]
        total = total + ((1 - label_smoothing) * nll + label_smoothing * smoothing[index]).sum()
        count += len(index)
    return total / max(1, count)


def validation_ndcg10(
    lm: ItemTokenLM, histories: Sequence[list[int]], targets: np.ndarray, batch_size: int
) -> float:
    """NDCG@10 of the top-10 list for each held-out target, history items excluded (the served ranking)."""
    lm.model.eval()
    ranks = list_ranks(ranked_lists(lm.top_k, histories, 10, batch_size), targets)
    return metrics_from_ranks(ranks, cutoffs=(10,))["ndcg@10"]


def _train_epoch(
    lm: ItemTokenLM,
    examples: list[list[int]],
    optimizer: torch.optim.Optimizer,
    llm: LLMConfig,
    window: int,
    rng: np.random.Generator,
    progress: bool,
    epoch: int | str,
) -> float:
    lm.model.train()
    batches = [
        [examples[i] for i in index]
        for index in length_bucketed_batches([len(e) for e in examples], llm.batch_size, rng, pool_batches=50)
    ]
    total, bar = 0.0, tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False)
    for batch in bar:
        loss = sequence_loss(lm, batch, llm.label_smoothing, window, llm.context_free_targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in lm.model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        total += loss.item()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return total / max(1, len(batches))


def _average_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of same-shaped state dicts (non-float entries are taken from the last one)."""
    return {
        name: torch.stack([s[name] for s in states]).mean(0) if value.is_floating_point() else value
        for name, value in states[-1].items()
    }


def _add_embedding_dropout(lm: ItemTokenLM, p: float) -> None:
    """Dropout on the token embeddings while training (Llama has none of its own; the hook is not saved)."""
    if p > 0:
        lm.model.get_input_embeddings().register_forward_hook(
            lambda module, _, out: F.dropout(out, p, module.training)
        )
