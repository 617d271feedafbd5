import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import llm_cloud.train
from llm_cloud.model import ItemTokenLM, build_scratch
from llm_cloud.train import (
    TRAIN_LOG_FILE,
    TRAIN_RESULT_FILE,
    _average_states,
    sequence_loss,
    train_llm,
    training_examples,
    validation_ndcg10,
    validation_queries,
)
from lsc4rec.config import LLMConfig
from lsc4rec.data import TemporalSplit
from lsc4rec.errors import LSC4RecError
from tests.conftest import make_dataset

BATCH_ITEMS = [[3, 1, 4, 1, 5], [9, 2]]


@pytest.fixture(scope="module")
def lm_and_batch():
    """A small random scratch model (eval mode) and a batch of two prompts of unequal length."""
    torch.manual_seed(0)
    lm = build_scratch(LLMConfig(hidden=64, heads=1, layers=1, max_len=10), 12)
    lm.model.eval()
    return lm, [lm.template.encode_all(items) for items in BATCH_ITEMS]


def _hand_loss(lm, batch: list[list[int]], window: int, first_position: int = 0) -> torch.Tensor:
    """The windowed loss written out one (prompt position, future item) pair at a time, from ``first_position``."""
    terms = []
    for example in batch:
        ids = torch.tensor([example])
        hidden = lm.hidden_states(ids, torch.ones_like(ids))[0]
        items = [t - lm.template.first_item_token for t in example[1:]]  # example[0] is the BOS token
        for position in range(first_position, len(items)):
            log_probs = F.log_softmax(lm.item_logits(hidden[position]).float(), -1)
            terms += [-log_probs[items[position + d]] for d in range(window) if position + d < len(items)]
    return torch.stack(terms).mean()


@pytest.mark.parametrize("window", [1, 2, 3, 9])
def test_windowed_loss_averages_every_future_item_within_its_own_sequence(lm_and_batch, window: int) -> None:
    lm, batch = lm_and_batch
    with torch.no_grad():
        got = sequence_loss(lm, batch, 0.0, window, context_free=True)
        want = _hand_loss(lm, batch, window)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    if window > 1:  # the window adds terms: the loss differs from the next-item one
        assert got.item() != pytest.approx(
            sequence_loss(lm, batch, 0.0, 1, context_free=True).item(), rel=1e-4
        )


@pytest.mark.parametrize("window", [1, 3])
def test_without_context_free_targets_the_prefix_position_predicts_nothing(lm_and_batch, window: int) -> None:
    lm, batch = lm_and_batch
    with torch.no_grad():
        got = sequence_loss(lm, batch, 0.0, window, context_free=False)
        want = _hand_loss(lm, batch, window, first_position=1)  # position 0 has read only the BOS token
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert got.item() != pytest.approx(
        sequence_loss(lm, batch, 0.0, window, context_free=True).item(), rel=1e-4
    )


def test_next_item_loss_with_label_smoothing_matches_torch_cross_entropy(lm_and_batch) -> None:
    lm, batch = lm_and_batch
    with torch.no_grad():
        logits, labels = [], []
        for example in batch:
            ids = torch.tensor([example])
            logits.append(lm.item_logits(lm.hidden_states(ids, torch.ones_like(ids))[0, :-1]))
            labels.append(ids[0, 1:] - lm.template.first_item_token)
        want = F.cross_entropy(torch.cat(logits), torch.cat(labels), label_smoothing=0.1)
        got = sequence_loss(lm, batch, 0.1, window=1, context_free=True)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_under_a_titles_template_only_the_item_tokens_are_labels() -> None:
    """A title's text tokens follow each item token: the loss reads the positions before an item token only."""
    torch.manual_seed(0)
    lm = build_scratch(LLMConfig(hidden=64, heads=1, layers=1, max_len=10), 12)
    lm.model.eval()
    text = lm.template.first_item_token - 1  # below the item range (here the only one): a title's text
    lm.template = dataclasses.replace(lm.template, kind="titles", title_tokens=[[text]] * 12)
    example = lm.template.encode_all([3, 1, 4])  # prefix, item 3, text, item 1, text, item 4, text
    with torch.no_grad():
        ids = torch.tensor([example])
        hidden = lm.hidden_states(ids[:, :-1], torch.ones_like(ids[:, :-1]))[0]
        positions, items = torch.tensor([0, 2, 4]), torch.tensor([3, 1, 4])
        want = F.cross_entropy(lm.item_logits(hidden[positions]).float(), items - 1)
        got = sequence_loss(lm, [example], 0.0, window=1, context_free=True)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_average_states_means_float_tensors_and_keeps_the_rest_from_the_last() -> None:
    states = [
        {"w": torch.tensor([1.0, 2.0]), "step": torch.tensor(3)},
        {"w": torch.tensor([3.0, 6.0]), "step": torch.tensor(4)},
    ]
    averaged = _average_states(states)
    assert torch.equal(averaged["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(averaged["step"], torch.tensor(4))


def test_the_llm_trains_and_validates_on_the_cloud_view_only(
    tiny_dataset, tiny_config, tmp_path, monkeypatch
) -> None:
    """Lag 2 on x_1 … x_7: the cloud holds x_1 … x_3 (x_3 the validation target, as the service is asked for the
    next item after x_1 x_2); training reads only its sequences, and each window ends at the newest item."""
    assert validation_queries(TemporalSplit(make_dataset([[1, 2, 3, 4, 5, 6, 7]]), lag=2)) == ([[1, 2]], [3])
    lm = build_scratch(LLMConfig(hidden=64, heads=1, layers=1, max_len=10), 12)
    assert training_examples(lm, [np.array([1, 2, 3])], True) == [lm.template.encode_all([1, 2, 3])]
    read = []

    def recording(lm, sequences, context_free):
        read.extend(sequences)
        return training_examples(lm, sequences, context_free)

    monkeypatch.setattr(llm_cloud.train, "training_examples", recording)
    config = tiny_config.override(["llm.epochs=1", "llm.refit_epochs=0"])
    train_llm(config, tiny_dataset, tmp_path / "ckpt", progress=False)
    split = TemporalSplit(tiny_dataset, config.data.lag)
    assert len(read) == split.num_users
    assert all(np.array_equal(seq, split.llm_train_sequence(u)) for u, seq in enumerate(read))


def test_the_averaged_weights_are_kept_only_when_validation_prefers_them(
    tiny_dataset, tiny_config, tmp_path
) -> None:
    config = tiny_config.override(["llm.average_epochs=3", "llm.refit_epochs=0", "llm.patience=10"])
    result = train_llm(config, tiny_dataset, tmp_path / "avg", progress=False)
    log = [json.loads(line) for line in (tmp_path / "avg" / TRAIN_LOG_FILE).read_text().splitlines()]
    best_epoch = max(entry["valid_ndcg@10"] for entry in log if "epoch" in entry)
    (averaged,) = [entry for entry in log if "averaged_epochs" in entry]
    assert averaged["averaged_epochs"] == 3
    assert result.best_valid_ndcg10 == max(best_epoch, averaged["valid_ndcg@10"])
    assert result.averaged_epochs == (3 if averaged["valid_ndcg@10"] > best_epoch else 0)
    saved = ItemTokenLM.from_pretrained(result.checkpoint)
    assert validation_ndcg10(
        saved, *validation_queries(TemporalSplit(tiny_dataset, config.data.lag)), 64
    ) == pytest.approx(result.best_valid_ndcg10)


def test_a_training_cut_off_while_saving_leaves_the_older_checkpoint_whole(
    tiny_dataset, tiny_config, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint is written beside OUT and moved in whole: a full disk while saving over an older training
    leaves that training's files as they were (the launcher's cache trusts train_result.json beside them)."""
    out = tmp_path / "ckpt"
    train_llm(tiny_config, tiny_dataset, out, progress=False)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    save = ItemTokenLM.save_pretrained

    def disk_full(self, folder, *args, **kwargs):
        save(self, folder, *args, **kwargs)  # some files written, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ItemTokenLM, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train_llm(tiny_config.override(["seed=1"]), tiny_dataset, out, progress=False)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert [f.name for f in tmp_path.iterdir()] == ["ckpt"]  # no staging folder left behind


@pytest.mark.parametrize("failing", ["old aside", "new in place"])
def test_a_move_that_fails_keeps_both_checkpoints_and_names_the_new_one(
    tiny_dataset, tiny_config, tmp_path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """A mount point cannot be renamed, a rename can fail: the older checkpoint stays in OUT, the new one whole
    beside it, and the error says where (a finished training is never deleted)."""
    out = tmp_path / "ckpt"
    train_llm(tiny_config, tiny_dataset, out, progress=False)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    rename = os.rename

    def busy(src, dst):
        moving = Path(src).name == "ckpt" if failing == "old aside" else Path(src).name.endswith(".partial")
        if moving:
            raise OSError(16, "Device or resource busy")
        rename(src, dst)

    monkeypatch.setattr("llm_cloud.train.os.rename", busy)
    with pytest.raises(
        LSC4RecError, match=r"could not be moved to .*ckpt \(Device or resource busy\); it is whole in"
    ):
        train_llm(tiny_config.override(["seed=1"]), tiny_dataset, out, progress=False)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    [kept] = tmp_path.glob(".ckpt.*.partial")
    assert json.loads((kept / TRAIN_RESULT_FILE).read_text())["checkpoint"] == str(out)
    assert ItemTokenLM.from_pretrained(kept).num_items == tiny_dataset.num_items
    assert sorted(f.name for f in tmp_path.iterdir()) == [kept.name, "ckpt"]


def test_a_training_told_not_to_replace_keeps_what_another_saved_meanwhile(
    tiny_dataset, tiny_config, tmp_path
) -> None:
    """`lsc4rec llm train` checks that OUT is new or empty before training; a second training into the same OUT,
    started beside it, finds the first one's checkpoint there at the end and leaves it be."""
    out = tmp_path / "ckpt"
    train_llm(tiny_config, tiny_dataset, out, progress=False)  # the one that finished first
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(
        LSC4RecError, match=r"could not be moved to .*ckpt \(Directory not empty\); it is whole"
    ):
        train_llm(tiny_config.override(["seed=1"]), tiny_dataset, out, progress=False, replace=False)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    [kept] = tmp_path.glob(".ckpt.*.partial")
    assert ItemTokenLM.from_pretrained(kept).num_items == tiny_dataset.num_items


def test_saving_over_a_folder_replaces_it_whole(tiny_dataset, tiny_config, tmp_path) -> None:
    """No file of the older checkpoint survives beside the new one (vLLM would load a stray weight shard)."""
    out = tmp_path / "ckpt"
    train_llm(tiny_config, tiny_dataset, out, progress=False)
    (out / "model-00002-of-00002.safetensors").write_bytes(b"older shard")
    result = train_llm(tiny_config, tiny_dataset, out, progress=False)
    assert not (out / "model-00002-of-00002.safetensors").exists()
    assert json.loads((out / TRAIN_RESULT_FILE).read_text())["checkpoint"] == result.checkpoint == str(out)
    assert [f.name for f in tmp_path.iterdir()] == ["ckpt"]
