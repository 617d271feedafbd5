"""The checkpoint folder's own files, and the checks that keep a wrong or broken folder from answering wrongly.

A checkpoint is one Hugging Face folder (model, tokenizer) plus three files of ours: the prompt template, the
item map (original ids of items 1..N) and the run config it was trained with. Items are numbered per prepared
dataset (random numbering depends on the seed), so a checkpoint used with other data would rank *other* items
without any error: :func:`check_same_items` refuses that, and every place that pairs a checkpoint with a dataset
(``lsc4rec llm evaluate``, the launcher's candidate service, the benchmarks ``llm_quality`` and
``request_signals``) calls it. Engines read a checkpoint through :func:`read_template` and :func:`read_json`, so a
missing or damaged file is one message naming ``--checkpoint``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safetensors import safe_open

from llm_cloud.templates import TEMPLATE_FILE, PromptTemplate
from lsc4rec.config import RunConfig
from lsc4rec.data import SequenceDataset
from lsc4rec.errors import ConfigError
from lsc4rec.protocol import catalogue_digest

ITEM_MAP_FILE = "item_map.json"
RUN_CONFIG_FILE = "lsc4rec_config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # one file, or an index of shards
RETRAIN = "Train it again with `lsc4rec llm train`, or check the path."


def check_files(folder: str | Path) -> Path:
    """``folder`` as a Path once it holds every file a checkpoint needs; else a ConfigError naming the missing ones."""
    folder = Path(folder)
    if folder.is_dir():
        needed = ("config.json", "tokenizer.json", TEMPLATE_FILE, ITEM_MAP_FILE, RUN_CONFIG_FILE)
        missing = [name for name in needed if not (folder / name).is_file()]
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            missing.append(WEIGHT_FILES[0])
        problem = f"without {', '.join(missing)}" if missing else ""
    else:
        problem = "(no such folder)"
    if problem:
        raise ConfigError(
            "--checkpoint",
            f"must be a folder written by `lsc4rec llm train`, got {folder} {problem}. {RETRAIN}",
        )
    return folder


def read_run_config(folder: str | Path) -> RunConfig:
    """The run config the checkpoint was trained with (``lsc4rec llm evaluate`` takes its lag and K from it)."""
    return RunConfig.load(check_files(folder) / RUN_CONFIG_FILE)


def write_item_map(folder: Path, num_items: int, first_item_token: int, item_ids: Sequence[str]) -> None:
    """Record which original item each item token stands for (what :func:`check_same_items` compares)."""
    item_map = {
        "num_items": num_items,
        "first_item_token": first_item_token,
        "item_ids": [str(i) for i in item_ids],
    }
    (folder / ITEM_MAP_FILE).write_text(json.dumps(item_map))


def file_error(path: Path, exc: Exception) -> ConfigError:
    """The error for a checkpoint file that does not load.

    One this user may not read is whole, not damaged: training again would not help.
    """
    if isinstance(exc, PermissionError):
        return ConfigError("--checkpoint", f"{path} cannot be read ({exc.strerror}). Make it readable.")
    return ConfigError("--checkpoint", f"{path} is damaged ({exc}). {RETRAIN}")


def read_json(folder: str | Path, name: str) -> dict[str, Any]:
    """The JSON object in the checkpoint's file ``name``; a damaged file is a ConfigError naming ``--checkpoint``."""
    path = check_files(folder) / name
    try:
        tree = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        raise file_error(path, exc) from None
    if not isinstance(tree, dict):
        raise ConfigError("--checkpoint", f"{path} is damaged (not a JSON object). {RETRAIN}")
    return tree


def read_template(folder: str | Path) -> PromptTemplate:
    """The checkpoint's prompt template: what every engine reads first, so where a wrong folder shows."""
    fields, item_map = read_json(folder, TEMPLATE_FILE), read_json(folder, ITEM_MAP_FILE)
    model_config = read_json(folder, "config.json")
    text_config = model_config.get("text_config")  # multimodal configs keep the language model's here
    vocab = model_config.get(
        "vocab_size", text_config.get("vocab_size") if isinstance(text_config, dict) else None
    )
    if type(vocab) is not int:
        raise ConfigError(
            "--checkpoint", f"{Path(folder, 'config.json')} is damaged (vocab_size {vocab!r}). {RETRAIN}"
        )
    try:
        template = PromptTemplate(**fields)
        _check_template(template, item_map, vocab)
    except (TypeError, ValueError) as exc:  # fields missing, unknown, of the wrong kind, or at odds
        raise ConfigError(
            "--checkpoint", f"{Path(folder, TEMPLATE_FILE)} is damaged ({exc}). {RETRAIN}"
        ) from None
    return template


def _check_template(template: PromptTemplate, item_map: dict, vocab: int) -> None:
    """Raise ValueError unless the template's values have their types, fit the vocabulary and match the item map.

    Its fields are read as they are, so a hand-edited or damaged file would otherwise fail as an IndexError in
    the middle of an evaluation, or serve lists of a catalogue cut short. ``vocab`` is the model's
    ``vocab_size`` (``config.json``), which every token id the template names must lie under.
    """
    counts = ("num_items", "first_item_token", "max_len", "pad_token")
    if not all(type(getattr(template, name)) is int for name in counts):
        raise ValueError(f"{', '.join(counts)} must be integers")
    token_lists = {"prefix": template.prefix, "separator": template.separator}
    token_lists.update({f"title_tokens[{i}]": t for i, t in enumerate(template.title_tokens)})
    for name, tokens in [*token_lists.items(), ("pad_token", [template.pad_token])]:
        if not isinstance(tokens, list) or not all(type(t) is int and 0 <= t < vocab for t in tokens):
            raise ValueError(f"{name} must hold token ids from 0 to {vocab - 1}, got {tokens!r}")
    if not 0 <= template.first_item_token <= vocab - template.num_items:
        raise ValueError(
            f"{template.num_items} item tokens from token {template.first_item_token} do not fit a vocabulary "
            f"of {vocab}"
        )
    if template.kind not in ("items", "titles") or template.num_items < 1 or template.max_len < 1:
        raise ValueError(
            f"kind {template.kind!r}, num_items {template.num_items}, max_len {template.max_len}"
        )
    if template.kind == "titles" and len(template.title_tokens) != template.num_items:
        raise ValueError(f"{len(template.title_tokens)} titles for {template.num_items} items")
    mapped = (
        item_map.get("num_items"),
        item_map.get("first_item_token"),
        len(item_map.get("item_ids") or []),
    )
    if mapped != (template.num_items, template.first_item_token, template.num_items):
        raise ValueError(
            f"{template.num_items} items from token {template.first_item_token}, but {ITEM_MAP_FILE} maps "
            f"{mapped[2]} items from token {mapped[1]}"
        )


def check_weights(folder: str | Path) -> None:
    """Read the header of every weights file, which safetensors checks against the file's size.

    A file cut short (a copy or a disk that ran out) fails only when a model loads it; the launcher checks a
    cached checkpoint here so that it is refused before any service or vLLM starts on it.
    """
    folder = check_files(folder)
    names = [WEIGHT_FILES[0]]
    if not (folder / WEIGHT_FILES[0]).is_file():  # sharded: the index names the shards
        shards = read_json(folder, WEIGHT_FILES[1]).get("weight_map")
        names = sorted(set(shards.values())) if isinstance(shards, dict) else [WEIGHT_FILES[1]]
    for name in names:
        try:
            with safe_open(folder / name, "pt"):
                pass
        except Exception as exc:  # SafetensorError, OSError: a missing or damaged file
            raise file_error(folder / name, exc) from None


def trained_item_ids(folder: str | Path) -> list:
    """The original ids of the checkpoint's items 1..N (the folder's files are checked first)."""
    trained = read_json(folder, ITEM_MAP_FILE).get("item_ids")
    if not isinstance(trained, list):
        raise ConfigError(
            "--checkpoint", f"{Path(folder, ITEM_MAP_FILE)} is damaged (no item_ids list). {RETRAIN}"
        )
    return trained


def catalogue_of(folder: str | Path) -> str:
    """The :func:`~lsc4rec.protocol.catalogue_digest` of the items the checkpoint was trained on."""
    return catalogue_digest(trained_item_ids(folder))


def check_same_items(folder: str | Path, dataset: SequenceDataset) -> None:
    """Refuse a checkpoint whose items 1..N are not ``dataset``'s items 1..N (same original ids, same order)."""
    trained = trained_item_ids(folder)
    current = [str(i) for i in dataset.item_ids.tolist()]
    if trained == current:
        return
    name = dataset.meta.get("name", "the dataset")
    if len(trained) != len(current):
        detail = f"it knows {len(trained)} items, {name} has {len(current)}"
    else:
        item = next(i for i, (a, b) in enumerate(zip(trained, current, strict=True)) if a != b) + 1
        detail = f"item {item} is {trained[item - 1]!r} there and {current[item - 1]!r} here"
    raise ConfigError(
        "--checkpoint",
        f"must be trained on the same prepared data, but {folder} numbers items differently ({detail}). "
        "Item numbers depend on the dataset, k-core, numbering and seed: use the checkpoint trained with the same "
        "settings, or train one on this data.",
    )
