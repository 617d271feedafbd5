"""Turning variable-length item sequences into padded tensors (left padding: the newest item is last)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def left_pad(sequences: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """Stack the newest ``max_len`` items of each sequence into a LongTensor [B, T], 0-padded on the left.

    T is the longest kept length in the batch (at most ``max_len``), so short batches stay short.
    """
    width = max(1, min(max_len, max((len(s) for s in sequences), default=1)))
    out = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = seq[-width:]
        if len(tail):
            out[row, width - len(tail) :] = tail
    return torch.from_numpy(out)


def next_item_batch(sequences: Sequence[np.ndarray], max_len: int) -> dict[str, torch.Tensor]:
    """Inputs and next-item targets at every position: ``history`` = x_1 … x_{m-1}, ``target`` = x_2 … x_m.

    Both [B, T] and left-padded with 0; a target of 0 marks a position without a label.
    """
    padded = left_pad(sequences, max_len + 1)
    history, target = padded[:, :-1], padded[:, 1:]
    return {"history": history, "target": target.masked_fill(history == 0, 0)}


def windows(sequence: np.ndarray, max_len: int) -> list[np.ndarray]:
    """Cut a long training sequence into windows of at most ``max_len + 1`` items, overlapping by one.

    Each next-item transition of the sequence then appears in exactly one window, so long MovieLens histories
    train every position instead of only their newest ``max_len``. The newest window is full-length.
    """
    step = max_len
    ends = range(len(sequence), 1, -step)
    return [sequence[max(0, end - step - 1) : end] for end in reversed(ends)]


def length_bucketed_batches(
    lengths: Sequence[int] | np.ndarray, batch_size: int, rng: np.random.Generator, pool_batches: int = 32
) -> list[np.ndarray]:
    """Index batches of similar-length examples, in a seeded random order.

    Shuffled, cut into pools of ``pool_batches`` batches, each pool sorted by length: a batch is as wide as its
    longest example, so on short-sequence data (Amazon: median 6 items) most padded computation is skipped
    while batches stay random.
    """
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    pool = pool_batches * batch_size
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]
