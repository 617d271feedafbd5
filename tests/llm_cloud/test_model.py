import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_cloud.model import ItemTokenLM, build_scratch
from llm_cloud.templates import PromptTemplate
from llm_cloud.train import TRAIN_RESULT_FILE, training_examples
from lsc4rec.config import LLMConfig
from lsc4rec.data import TemporalSplit
from lsc4rec.errors import ConfigError

HISTORIES = [
    [1, 2, 3],
    [5],
    [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28],
]


def test_scratch_vocabulary_is_items_plus_four_specials() -> None:
    lm = build_scratch(LLMConfig(hidden=64, heads=1, layers=1), 30)
    assert lm.model.config.vocab_size == 34
    assert lm.model.config.hidden_size // lm.model.config.num_attention_heads == 64  # vLLM CPU attention
    assert lm.tokenizer.convert_tokens_to_ids("<item_7>") == lm.template.item_token(7) == 7


def test_checkpoint_reloads_with_from_pretrained_and_same_lists(tiny_checkpoint) -> None:
    lm = ItemTokenLM.from_pretrained(tiny_checkpoint)
    files = {p.name for p in tiny_checkpoint.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "item_map.json",
        "lsc4rec_template.json",
        "lsc4rec_config.json",
    } <= files
    plain = AutoModelForCausalLM.from_pretrained(tiny_checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    ids = tokenizer("<bos> <item_1> <item_2>", return_tensors="pt").input_ids
    assert ids.tolist() == [[lm.template.prefix[0], 1, 2]]
    with torch.no_grad():
        logits = plain(ids).logits[0, -1, 1 : 1 + lm.num_items]
    expected = torch.log_softmax(logits, -1)
    assert torch.allclose(lm.item_log_probs([[1, 2]])[0], expected, atol=1e-5)


def test_top_k_never_returns_history_excluded_or_non_item_tokens(tiny_checkpoint) -> None:
    lm = ItemTokenLM.from_pretrained(tiny_checkpoint)
    exclude = [[4, 6], [], [1]]
    for history, extra, (items, scores) in zip(
        HISTORIES, exclude, lm.top_k(HISTORIES, 40, exclude), strict=True
    ):
        assert len(items) == lm.num_items - len(set(history) | set(extra))
        assert not (set(items) & (set(history) | set(extra)))
        assert all(1 <= i <= lm.num_items for i in items)
        assert scores == sorted(scores, reverse=True)


def test_top_k_batched_equals_unbatched(tiny_checkpoint) -> None:
    lm = ItemTokenLM.from_pretrained(tiny_checkpoint)
    batched = lm.top_k(HISTORIES, 10)
    for history, (items, scores) in zip(HISTORIES, batched, strict=True):
        single_items, single_scores = lm.top_k([history], 10)[0]
        assert items == single_items
        np.testing.assert_allclose(scores, single_scores, atol=1e-5)


def test_trained_model_learns_the_next_item_pattern(tiny_checkpoint, tiny_config) -> None:
    lm = ItemTokenLM.from_pretrained(tiny_checkpoint)
    items, _ = lm.top_k([[10, 11, 12]], 3)[0]
    assert 13 in items
    log = [json.loads(line) for line in (tiny_checkpoint / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    refits = [entry["refit"] for entry in log if "refit" in entry]
    assert refits == list(range(1, tiny_config.llm.refit_epochs + 1)) and refits
    result = json.loads((tiny_checkpoint / TRAIN_RESULT_FILE).read_text())
    assert tiny_config.llm.target_window == 0  # the default: resolved to ℓ + 1
    assert result["target_window"] == tiny_config.data.lag + 1 == 3


def test_training_examples_use_only_the_llm_training_sequence(tiny_dataset, tiny_config) -> None:
    lm = build_scratch(tiny_config.llm, tiny_dataset.num_items)
    split = TemporalSplit(tiny_dataset, tiny_config.data.lag)
    for user in range(split.num_users):
        seq = split.llm_train_sequence(user)
        first = lm.template.first_item_token
        examples = training_examples(lm, [seq], context_free=True)
        tokens = [t for ex in examples for t in ex if first <= t < first + lm.num_items]
        assert sorted(t - first + 1 for t in tokens) == sorted(seq.tolist())
        assert len(seq) == len(tiny_dataset.sequence(user)) - 3 - tiny_config.data.lag


@pytest.mark.parametrize("context_free", [True, False])
@pytest.mark.parametrize("length", [1, 5, 6, 7, 13, 16])
def test_every_item_is_a_next_item_target_once_in_windows_of_max_len_plus_one(
    context_free: bool, length: int
) -> None:
    """A sequence longer than a prompt is cut into windows; none of its items may fall out as a target.

    A window's targets are its items, less its first one when the prediction from the prompt prefix alone is
    left out (``context_free = False``): then the windows overlap by that item, else the one before each window
    would never be predicted from the items before it.
    """
    lm = build_scratch(LLMConfig(hidden=16, heads=1, layers=1, max_len=5), num_items=20)
    first = lm.template.first_item_token
    seq = np.arange(1, length + 1)
    windows = [
        [t - first + 1 for t in ex[len(lm.template.prefix) :]]
        for ex in training_examples(lm, [seq], context_free)
    ]
    assert windows[0][-1] == length and all(len(w) <= 6 for w in windows)  # the newest first, as served
    # no window beyond the one that starts the sequence: one, and one more per step before it
    step = 6 if context_free else 5
    beyond_first = max(0, length - 6)
    assert len(windows) == 1 + -(-beyond_first // step)
    targets = sorted(item for w in windows for item in (w if context_free else w[1:]))
    assert targets == list(range(1 if context_free else 2, length + 1))


def test_titles_template_puts_title_tokens_between_items() -> None:
    template = PromptTemplate(
        "titles",
        3,
        first_item_token=100,
        max_len=2,
        prefix=[1],
        separator=[9],
        title_tokens=[[11], [21, 22], [31]],
    )
    assert template.encode([1, 2, 3]) == [1, 101, 21, 22, 9, 102, 31, 9]
    assert template.max_prompt_tokens() == 1 + 2 * 4


def test_a_checkpoint_of_this_project_is_refused_as_a_base(tiny_checkpoint) -> None:
    """Its vocabulary already holds the item tokens, which adding them again would not append."""
    from llm_cloud.model import build_pretrained

    with pytest.raises(
        ConfigError, match=r"config llm\.base: .* already has item tokens \(<item_1> is token 1\)"
    ):
        build_pretrained(LLMConfig(base=str(tiny_checkpoint)), num_items=40)


def _base_without_bos(folder, eos: bool) -> str:
    """A tiny Llama whose tokenizer has no BOS token (as Qwen2's), and no EOS either unless ``eos``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "a": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", **({"eos_token": "<eos>"} if eos else {})
    )
    config = LlamaConfig(
        vocab_size=3, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_a_base_without_bos_starts_its_prompts_with_eos(tmp_path) -> None:
    """Every prompt needs a token before its first item: an empty history is a prompt, and the prediction made
    from the prefix alone is the one training may leave out (``context_free_targets``)."""
    from llm_cloud.model import build_pretrained

    lm = build_pretrained(LLMConfig(base=_base_without_bos(tmp_path / "eos", eos=True)), num_items=5)
    assert lm.template.prefix == [1] and lm.template.encode([]) == [1]
    with pytest.raises(ConfigError, match=r"config llm\.base: has neither a BOS nor an EOS token"):
        build_pretrained(LLMConfig(base=_base_without_bos(tmp_path / "none", eos=False)), num_items=5)


@pytest.mark.parametrize("name", ["not-a-model", "fake.gguf"])
def test_a_base_that_is_no_model_names_llm_base(tmp_path, name: str) -> None:
    from llm_cloud.model import build_pretrained

    base = tmp_path / name
    if name.endswith(".gguf"):
        base.write_bytes(b"GGUF but not really")
    else:
        base.mkdir()
        (base / "README.md").write_text("just a folder")
    with pytest.raises(
        ConfigError, match=r"config llm\.base: must be a Hugging Face causal LM folder or a \.gguf"
    ):
        build_pretrained(LLMConfig(base=str(base)), num_items=5)
