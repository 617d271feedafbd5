"""A checkpoint folder that is incomplete, damaged or trained on other data is refused with a message, never used."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_cloud.checkpoint import (
    ITEM_MAP_FILE,
    check_files,
    check_same_items,
    check_weights,
    read_json,
    read_run_config,
)
from llm_cloud.cli import app
from llm_cloud.engines import make_engine
from llm_cloud.model import ItemTokenLM
from llm_cloud.processes import free_port
from llm_cloud.templates import TEMPLATE_FILE
from lsc4rec.data import SequenceDataset
from lsc4rec.errors import ConfigError, DataFormatError


@pytest.mark.parametrize(
    "name", ["model.safetensors", ITEM_MAP_FILE, "config.json", "tokenizer.json", "lsc4rec_config.json"]
)
def test_a_missing_file_is_named(copied_checkpoint: Path, name: str) -> None:
    (copied_checkpoint / name).unlink()
    with pytest.raises(ConfigError, match=rf"--checkpoint: must be a folder written by .* without {name}"):
        check_files(copied_checkpoint)
    with pytest.raises(ConfigError, match=f"without {name}"):
        ItemTokenLM.from_pretrained(copied_checkpoint)


@pytest.mark.parametrize("content", ['{"kind": ', '{"kind": "items"}', "[1]"])
def test_a_damaged_template_is_refused_by_every_engine(copied_checkpoint: Path, content: str) -> None:
    (copied_checkpoint / TEMPLATE_FILE).write_text(content)
    with pytest.raises(ConfigError, match=rf"--checkpoint: .*{TEMPLATE_FILE} is damaged"):
        ItemTokenLM.from_pretrained(copied_checkpoint)
    with pytest.raises(ConfigError, match=f"{TEMPLATE_FILE} is damaged"):
        make_engine("vllm", copied_checkpoint, "http://127.0.0.1:9")  # checked before any request


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("num_items", "many", "must be integers"),
        (
            "num_items",
            30,
            r"30 items from token \d+, but item_map\.json maps 40 items",
        ),  # a catalogue cut short
        ("kind", "words", "kind 'words'"),
        ("kind", "titles", "0 titles for 40 items"),  # every request would fail on the first title
        # token ids the model has no row for would fail as an IndexError inside the first forward pass
        ("prefix", [100000], r"prefix must hold token ids from 0 to 43, got \[100000\]"),
        ("prefix", ["a"], "prefix must hold token ids"),
        ("pad_token", -5, r"pad_token must hold token ids from 0 to 43, got \[-5\]"),
        ("first_item_token", 10, "40 item tokens from token 10 do not fit a vocabulary of 44"),
    ],
)
def test_a_template_whose_values_are_wrong_is_refused(
    copied_checkpoint: Path, field: str, value: object, problem: str
) -> None:
    template = json.loads((copied_checkpoint / TEMPLATE_FILE).read_text())
    (copied_checkpoint / TEMPLATE_FILE).write_text(json.dumps({**template, field: value}))
    with pytest.raises(ConfigError, match=rf"{TEMPLATE_FILE} is damaged \(.*{problem}"):
        ItemTokenLM.from_pretrained(copied_checkpoint)


def test_a_config_without_a_vocabulary_size_is_named_itself(copied_checkpoint: Path) -> None:
    """The template's token ids are checked against ``vocab_size``: a config without one is the config's fault."""
    config = json.loads((copied_checkpoint / "config.json").read_text())
    del config["vocab_size"]
    (copied_checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"--checkpoint: .*config\.json is damaged \(vocab_size None\)"):
        ItemTokenLM.from_pretrained(copied_checkpoint)


def test_the_vllm_engine_checks_the_folder_too(copied_checkpoint: Path) -> None:
    (copied_checkpoint / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"without config\.json"):
        make_engine("vllm", copied_checkpoint, "http://127.0.0.1:9")


def test_truncated_weights_are_a_config_error(copied_checkpoint: Path) -> None:
    weights = copied_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ConfigError, match=r"--checkpoint: .* does not load"):
        ItemTokenLM.from_pretrained(copied_checkpoint)


def test_weights_that_do_not_fill_the_config_are_refused_not_initialised(copied_checkpoint: Path) -> None:
    """A layer added to config.json would be random weights, which transformers only reports in a table."""
    config = json.loads((copied_checkpoint / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (copied_checkpoint / "config.json").write_text(json.dumps(config))
    layer = config["num_hidden_layers"] - 1
    with pytest.raises(
        ConfigError, match=rf"do not match its config.json \(missing keys: model.layers.{layer}\."
    ):
        ItemTokenLM.from_pretrained(copied_checkpoint)


def test_weights_cut_short_are_found_by_their_header_single_or_sharded(copied_checkpoint: Path) -> None:
    check_weights(copied_checkpoint)  # whole: no error
    model = ItemTokenLM.from_pretrained(copied_checkpoint).model
    (copied_checkpoint / "model.safetensors").unlink()
    model.save_pretrained(copied_checkpoint, max_shard_size="20KB")  # shards and their index
    shards = sorted(copied_checkpoint.glob("model-*.safetensors"))
    assert len(shards) > 1
    check_weights(copied_checkpoint)
    shards[-1].write_bytes(shards[-1].read_bytes()[:-8])
    with pytest.raises(
        ConfigError, match=rf"--checkpoint: .*{shards[-1].name} is damaged \(.*not fully covered"
    ):
        check_weights(copied_checkpoint)
    # vllm-serve checks them before it starts vLLM (a port of its own, no venv needed to be refused)
    log = copied_checkpoint.parent / "vllm.log"
    args = [
        "vllm-serve",
        "--checkpoint",
        str(copied_checkpoint),
        "--port",
        str(free_port()),
        "--log",
        str(log),
    ]
    done = CliRunner().invoke(app, args)
    assert isinstance(done.exception, ConfigError) and "is damaged" in str(done.exception)
    assert not log.exists()  # vLLM never started


def test_a_damaged_run_config_names_its_file(copied_checkpoint: Path) -> None:
    (copied_checkpoint / "lsc4rec_config.json").write_text('{"llm": ')
    with pytest.raises(
        DataFormatError, match=r"lsc4rec_config\.json: cannot be read as a run config .*Restore it"
    ):
        read_run_config(copied_checkpoint)
    (copied_checkpoint / "lsc4rec_config.json").write_text("[1, 2]")
    with pytest.raises(DataFormatError, match="must hold a JSON object"):
        read_run_config(copied_checkpoint)


def test_the_same_data_passes_and_other_numberings_are_refused(
    tiny_checkpoint: Path, tiny_dataset: SequenceDataset
) -> None:
    check_same_items(tiny_checkpoint, tiny_dataset)  # trained on it: no error
    renumbered = dataclasses.replace(tiny_dataset, item_ids=np.roll(tiny_dataset.item_ids, 1))
    with pytest.raises(ConfigError, match=r"numbers items differently \(item 1 is '0' there and '39' here\)"):
        check_same_items(tiny_checkpoint, renumbered)
    smaller = dataclasses.replace(tiny_dataset, item_ids=tiny_dataset.item_ids[:-1])
    with pytest.raises(ConfigError, match="it knows 40 items, synthetic has 39"):
        check_same_items(tiny_checkpoint, smaller)


def test_a_damaged_item_map_is_refused(copied_checkpoint: Path, tiny_dataset: SequenceDataset) -> None:
    (copied_checkpoint / ITEM_MAP_FILE).write_text('{"num_items": 40}')
    with pytest.raises(ConfigError, match="is damaged \\(no item_ids list\\)"):
        check_same_items(copied_checkpoint, tiny_dataset)


def test_evaluate_refuses_data_the_checkpoint_was_not_trained_on(
    tiny_checkpoint: Path, tiny_dataset: SequenceDataset, tmp_path: Path
) -> None:
    renumbered = dataclasses.replace(tiny_dataset, item_ids=np.roll(tiny_dataset.item_ids, 1))
    data = renumbered.save(tmp_path / "other.npz")
    out = tmp_path / "m.json"
    args = ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--json", str(out)]
    done = CliRunner().invoke(app, args)
    assert isinstance(done.exception, ConfigError) and "numbers items differently" in str(done.exception)
    assert not out.exists()  # nothing evaluated, nothing written


def test_a_checkpoint_file_that_cannot_be_read_is_not_called_damaged(
    copied_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without read permission (root reads anyway, so the refusal is made here) retraining is the wrong advice."""

    def refused(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refused)
    with pytest.raises(
        ConfigError, match=r"lsc4rec_template\.json cannot be read \(Permission denied\)\. Make it readable"
    ):
        read_json(copied_checkpoint, TEMPLATE_FILE)


def test_evaluate_refuses_a_lag_the_data_cannot_take_before_the_model_loads(
    tiny_checkpoint: Path, tiny_dataset: SequenceDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_dataset.save(tmp_path / "d.npz")

    def no_model(*args: object) -> None:
        raise AssertionError("the model loaded before the lag was checked")

    monkeypatch.setattr("llm_cloud.engines.make_engine", no_model)
    done = CliRunner().invoke(
        app, ["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--lag", "1000"]
    )
    assert isinstance(done.exception, ConfigError) and str(done.exception).startswith(
        "--lag: must be in [0, "
    )
