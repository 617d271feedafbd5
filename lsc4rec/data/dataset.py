"""The prepared dataset: one chronological item sequence per user, items numbered 1..N (0 is padding).

Built from raw :class:`~lsc4rec.data.interactions.Interactions` by k-core filtering and re-numbering, and stored
as one ``.npz`` file (flat item array + offsets), which loads in milliseconds.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lsc4rec.data.interactions import Interactions
from lsc4rec.errors import DataFormatError
from lsc4rec.files import write_atomically
from lsc4rec.protocol import catalogue_digest

log = logging.getLogger(__name__)

# What a command that reads a prepared dataset expects, for its error messages.
_PREPARE = (
    "the .npz file that `lsc4rec data prepare --dataset NAME` prints "
    "(NAME: ml-latest-small, beauty, toys or a raw data folder)"
)


def _is_npy(path: Path) -> bool:
    """Whether ``path`` starts as numpy's ``.npy`` format does (one bare array)."""
    with path.open("rb") as handle:
        return handle.read(6) == b"\x93NUMPY"


@dataclass(frozen=True)
class SequenceDataset:
    """Per-user chronological sequences over items 1..N.

    Attributes
    ----------
    items, offsets:
        User ``u``'s sequence is ``items[offsets[u]:offsets[u + 1]]`` (int64, ids in 1..N).
    user_ids, item_ids:
        Original ids: ``user_ids[u]`` and ``item_ids[i - 1]`` for item ``i``.
    titles:
        ``titles[i - 1]`` is item ``i``'s title, or an empty string where the dataset has none.
    meta:
        How it was built (dataset name, k-core, numbering, seed), saved with it.
    """

    items: np.ndarray
    offsets: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    titles: np.ndarray
    meta: dict[str, Any]

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @cached_property  # asked for by every cloud fetch of a node
    def catalogue(self) -> str:
        """The numbering's fingerprint (:func:`~lsc4rec.protocol.catalogue_digest`), which the LLM must share."""
        return catalogue_digest(self.item_ids.tolist())

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def stats(self) -> dict[str, Any]:
        """Users, items, interactions, density and the sequence-length distribution."""
        lengths = self.lengths()
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": int(lengths.sum()),
            "density": float(lengths.sum() / (self.num_users * self.num_items)),
            "length_min": int(lengths.min()),
            "length_mean": float(lengths.mean()),
            "length_median": float(np.median(lengths)),
            "length_p90": float(np.percentile(lengths, 90)),
            "length_max": int(lengths.max()),
        }

    def save(self, path: str | Path) -> Path:
        """Write the dataset as one ``.npz``; a folder that cannot be made or written is a DataFormatError.

        Written atomically (:func:`~lsc4rec.files.write_atomically`): a run sharing the cache never reads
        half a file, and a failed or interrupted save leaves any earlier file whole.
        """
        path = Path(path)
        arrays = {
            "items": self.items,
            "offsets": self.offsets,
            "user_ids": self.user_ids,
            "item_ids": self.item_ids,
            "titles": self.titles,
            "meta": np.array(json.dumps(self.meta)),
        }
        try:
            write_atomically(path, lambda partial: np.savez(partial, **arrays))
        except OSError as exc:
            where = "data prepare's --out, or the cache under $XDG_CACHE_HOME"
            if isinstance(exc, (FileExistsError, NotADirectoryError)):  # a file stands where a folder must
                raise DataFormatError(
                    path,
                    f"cannot be written: a file stands where its folder must. Choose a folder ({where}).",
                ) from None
            raise DataFormatError(
                path, f"cannot be written ({exc.strerror}). Choose a folder you can write to ({where})."
            ) from None
        return path

    @classmethod
    def load(cls, path: str | Path) -> SequenceDataset:
        """Read a file :meth:`save` wrote; one that is not one, or breaks its invariants, names the file.

        The invariants are checked, not trusted: an item id beyond the catalogue or offsets that miss the end
        would otherwise surface as an IndexError deep in training, or worse, as a user silently dropped.
        """
        path = Path(path)
        try:
            if path.is_file() and not zipfile.is_zipfile(path) and not _is_npy(path):
                raise ValueError("it is not an .npz archive")  # numpy's own words would suggest allow_pickle
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy file: one bare array
                raise ValueError("it holds one array, not the arrays of an .npz")
            with loaded as arrays:
                dataset = cls(
                    arrays["items"].astype(np.int64),
                    arrays["offsets"].astype(np.int64),
                    arrays["user_ids"],
                    arrays["item_ids"],
                    arrays["titles"],
                    json.loads(str(arrays["meta"])),
                )
        except FileNotFoundError:
            raise DataFormatError(
                path, f"prepared dataset not found: expected {_PREPARE}. Run that first."
            ) from None
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataFormatError(path, f"is not a prepared dataset ({exc}); expected {_PREPARE}.") from None
        if (problem := dataset._broken_invariant()) is not None:
            raise DataFormatError(
                path,
                f"is a damaged prepared dataset: {problem}. Delete it and prepare it again (`lsc4rec data prepare`).",
            )
        return dataset

    def _broken_invariant(self) -> str | None:
        """The first invariant of the class docstring this dataset breaks, or None."""
        offsets, num_items = self.offsets, len(self.item_ids)
        if self.items.ndim != 1 or offsets.ndim != 1 or len(offsets) < 2:
            return "it must hold one item array and at least one user's offsets"
        if offsets[0] != 0 or offsets[-1] != len(self.items) or (np.diff(offsets) < 0).any():
            return (
                f"offsets must rise from 0 to the {len(self.items)} items, got {offsets[0]} .. {offsets[-1]}"
            )
        if len(self.items) and not (self.items.min() >= 1 and self.items.max() <= num_items):
            return f"item ids must lie in 1..{num_items}, got {self.items.min()} .. {self.items.max()}"
        if len(self.user_ids) != self.num_users or len(self.titles) != num_items:
            return "user ids, item ids and titles must match the users and items"
        if not isinstance(self.meta, dict):
            return f"its meta must be a JSON object, got {type(self.meta).__name__}"
        return None


def build_dataset(
    raw: Interactions, kcore: int = 5, numbering: str = "random", seed: int = 0, name: str = ""
) -> SequenceDataset:
    """Filter to the k-core, order each user's items by (time, item id) and number items 1..N.

    ``numbering="sequential"`` numbers items by first appearance along the users' sequences (P5's scheme, which
    leaks order); ``"random"`` applies a seeded permutation of that order.
    """
    users, items, times = raw.users, raw.items, raw.times
    keep = kcore_mask(users, items, kcore)
    dropped = len(users) - int(keep.sum())
    users, items, times = users[keep], items[keep], times[keep]
    if len(users) == 0:
        raise DataFormatError(
            raw.source,
            f"no interactions survive {kcore}-core filtering. Lower data.kcore (--kcore, or --set data.kcore=N).",
        )
    log.info(
        "%s: %d-core kept %d of %d interactions (%d dropped)",
        raw.source,
        kcore,
        len(users),
        len(users) + dropped,
        dropped,
    )
    kept_users, all_users = len(np.unique(users)), len(np.unique(raw.users))
    if kept_users < all_users:  # said where it is seen: a dataset of a sixteenth of its users is another one
        log.warning(
            "%s: %d-core kept %d of %d users and %d of %d items",
            raw.source,
            kcore,
            kept_users,
            all_users,
            len(np.unique(items)),
            len(np.unique(raw.items)),
        )
    user_order = {u: i for i, u in enumerate(dict.fromkeys(users.tolist()))}
    item_key = _id_sort_key(items)
    order = np.lexsort((item_key, times, np.array([user_order[u] for u in users])))
    users, items = users[order], items[order]
    first_seen = list(dict.fromkeys(items.tolist()))
    if numbering == "random":
        first_seen = [first_seen[i] for i in np.random.default_rng(seed).permutation(len(first_seen))]
    elif numbering != "sequential":
        raise DataFormatError(raw.source, f"numbering must be random|sequential, got {numbering!r}.")
    item_index = {item: i + 1 for i, item in enumerate(first_seen)}
    codes = np.array([item_index[i] for i in items.tolist()], dtype=np.int64)
    user_list = list(dict.fromkeys(users.tolist()))
    counts = Counter(users.tolist())
    offsets = np.concatenate([[0], np.cumsum([counts[u] for u in user_list])]).astype(np.int64)
    titles = np.array([raw.titles.get(item, "") for item in first_seen])
    meta = {
        "name": name or Path(raw.source).parent.name,
        "source": raw.source,
        "kcore": kcore,
        "numbering": numbering,
        "seed": seed,
    }
    return SequenceDataset(codes, offsets, np.array(user_list), np.array(first_seen), titles, meta)


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the interactions in the k-core: every kept user and item has >= k kept interactions."""
    keep = np.ones(len(users), dtype=bool)
    _, user_codes = np.unique(users, return_inverse=True)
    _, item_codes = np.unique(items, return_inverse=True)
    while True:
        user_counts = np.bincount(user_codes[keep], minlength=user_codes.max() + 1)
        item_counts = np.bincount(item_codes[keep], minlength=item_codes.max() + 1)
        new_keep = keep & (user_counts[user_codes] >= k) & (item_counts[item_codes] >= k)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


def _id_sort_key(ids: np.ndarray) -> np.ndarray:
    """Sort key for tie-breaking by item id: integer ids by value, then other ids as text.

    Each id's place depends on that id alone, so one long or alphanumeric id elsewhere in the file (kept by one
    k-core, dropped by another) cannot turn every tie to string order, where "10" comes before "9".
    """
    unique, inverse = np.unique(ids, return_inverse=True)
    order = sorted(
        range(len(unique)),
        key=lambda i: (0, int(s), "") if (s := str(unique[i])).isascii() and s.isdigit() else (1, 0, s),
    )
    rank = np.empty(len(unique), np.int64)
    rank[order] = np.arange(len(unique))
    return rank[inverse]
