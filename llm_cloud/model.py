"""The item-token causal LM: one vocabulary token per item, candidates are the top-K next item tokens.

Two ways to build one (DESIGN.md section 4):

- :func:`build_scratch`: a small Llama config whose vocabulary is the N item tokens plus four specials
  (``<pad>`` = 0, items 1..N = tokens 1..N, then ``<bos>``, ``<eos>``, ``<unk>``), trained fully. A vocabulary that
  is almost only items lets vLLM skip a long allow-list per request (../shared/ENVIRONMENT.md measured it 3x slower).
- :func:`build_pretrained`: a local Hugging Face causal LM folder or ``.gguf`` file, item tokens appended after
  its vocabulary, LoRA adapters (peft, ``bias="none"``, no ``modules_to_save``) on attention and MLP, and the new
  token rows trained through peft's ``trainable_token_indices``; merged before saving so vLLM serves it.

Scores are log-probabilities of the next token *renormalised over the item tokens* (log-softmax of the item
slice of the logits), so they do not depend on how much mass the few non-item tokens keep. Both engines return
exactly these numbers; the training loss is the cross-entropy of the same distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from llm_cloud.checkpoint import RETRAIN, RUN_CONFIG_FILE, file_error, read_template, write_item_map
from llm_cloud.templates import PromptTemplate
from lsc4rec.config import LLMConfig, RunConfig
from lsc4rec.errors import ConfigError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def item_token_name(item: int) -> str:
    """The vocabulary entry of item ``item`` (ids 1..N)."""
    return f"<item_{item}>"


class ItemTokenLM:
    """A causal LM with its prompt template; scores items for a batch of histories.

    Parameters
    ----------
    model:
        The Hugging Face causal LM (a peft model while LoRA training, a plain one otherwise).
    tokenizer:
        Its tokenizer, with the item tokens added.
    template:
        How histories become token ids (item ``i`` is token ``template.item_token(i)``).
    """

    def __init__(
        self, model: nn.Module, tokenizer: PreTrainedTokenizerFast, template: PromptTemplate
    ) -> None:
        self.model, self.tokenizer, self.template = model, tokenizer, template

    @property
    def num_items(self) -> int:
        return self.template.num_items

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the N item tokens [..., N] from final hidden states [..., D] (column i-1 is item i)."""
        first = self.template.first_item_token
        return self.model.get_output_embeddings()(hidden)[..., first : first + self.num_items]

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states [B, T, D]; positions count real tokens only, so left padding changes nothing."""
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions
        )
        return out.last_hidden_state

    @torch.no_grad()
    def item_log_probs(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Log-probabilities of the next item [B, N] (renormalised over item tokens) for each history."""
        prompts = [self.template.encode(h) for h in histories]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.template.pad_token, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        hidden = self.hidden_states(ids, mask)[:, -1]
        return torch.log_softmax(self.item_logits(hidden).float(), dim=-1)

    def top_k(
        self, histories: Sequence[Sequence[int]], k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> list[tuple[list[int], list[float]]]:
        """Per history the ``k`` most likely next items, best first, with their scores.

        Items in the history (all of it, not only the newest ``max_len``) and in ``exclude`` are never returned;
        a list is shorter than ``k`` only when fewer items remain.
        """
        log_probs = self.item_log_probs(histories)
        for row, history in enumerate(histories):
            banned = list(history) + (list(exclude[row]) if exclude is not None else [])
            log_probs[row, torch.tensor(banned, dtype=torch.long) - 1] = -torch.inf
        scores, index = log_probs.topk(min(k, self.num_items), dim=-1)
        out = []
        for row_scores, row_index in zip(scores.tolist(), (index + 1).tolist(), strict=True):
            keep = [j for j, s in enumerate(row_scores) if s != -float("inf")]
            out.append(([row_index[j] for j in keep], [row_scores[j] for j in keep]))
        return out

    def save_pretrained(
        self, folder: str | Path, run_config: RunConfig, item_ids: Sequence[str] = ()
    ) -> Path:
        """Write one Hugging Face folder that ``from_pretrained`` and ``vllm serve`` both load.

        LoRA adapters are merged first (vLLM cannot serve adapters that save whole modules). Besides the model
        and tokenizer files it holds the template, the item map (original ids of items 1..N) and the effective
        run config.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
        model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.template.save_pretrained(folder)
        write_item_map(folder, self.num_items, self.template.first_item_token, item_ids)
        run_config.save(folder / RUN_CONFIG_FILE)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ItemTokenLM:
        """Load a checkpoint written by :meth:`save_pretrained` (float32, eval mode).

        A folder that is not a whole checkpoint, or whose files do not load (truncated weights, edited JSON), is
        a ConfigError naming ``--checkpoint``, not a traceback from deep inside transformers. So are weights that
        do not fill the model its config describes (a tensor missing, a layer added to config.json): transformers
        would initialise the rest at random and only print a table.
        """
        template = read_template(folder)  # checks the folder's files first
        try:
            model, loading = AutoModelForCausalLM.from_pretrained(
                folder, dtype=torch.float32, output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (ImportError, MemoryError):  # a missing package or too little memory: not the folder's fault
            raise
        except PermissionError as exc:
            raise file_error(Path(exc.filename or folder), exc) from None
        except Exception as exc:  # transformers and safetensors raise many kinds for a bad file
            raise ConfigError(
                "--checkpoint", f"{folder} does not load ({type(exc).__name__}: {exc}). {RETRAIN}"
            ) from None
        if unfit := {kind: keys for kind, keys in loading.items() if kind != "error_msgs" and keys}:
            said = "; ".join(
                f"{kind.replace('_', ' ')}: {', '.join(sorted(map(str, keys))[:3])}"
                for kind, keys in unfit.items()
            )
            raise ConfigError(
                "--checkpoint", f"{folder}'s weights do not match its config.json ({said}). {RETRAIN}"
            )
        return cls(model.eval(), tokenizer, template)


def build_scratch(config: LLMConfig, num_items: int) -> ItemTokenLM:
    """A randomly initialised Llama over the item tokens, sized by ``config`` (hidden, layers, heads)."""
    tokenizer = scratch_tokenizer(num_items)  # LLMConfig allows only the items template for scratch
    template = PromptTemplate(
        "items",
        num_items,
        first_item_token=1,
        max_len=config.max_len,
        prefix=[tokenizer.bos_token_id],
        pad_token=tokenizer.pad_token_id,
    )
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden,
        intermediate_size=4 * config.hidden,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=template.max_prompt_tokens() + 1,
        attention_dropout=config.dropout,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    return ItemTokenLM(LlamaForCausalLM(llama), tokenizer, template)


def scratch_tokenizer(num_items: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: ``<pad>`` = 0, ``<item_i>`` = i, then ``<bos>``, ``<eos>``, ``<unk>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, **{item_token_name(i): i for i in range(1, num_items + 1)}}
    vocab.update({name: num_items + 1 + j for j, name in enumerate(("<bos>", "<eos>", "<unk>"))})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def build_pretrained(config: LLMConfig, num_items: int, titles: Sequence[str] = ()) -> ItemTokenLM:
    """``config.base`` (a HF folder or a ``.gguf`` file) with N item tokens appended and LoRA adapters added."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = _load_base(Path(config.base))
    start = _start_token(tokenizer)
    first = len(tokenizer)
    tokenizer.add_tokens([item_token_name(i) for i in range(1, num_items + 1)])
    item_1 = tokenizer.convert_tokens_to_ids(item_token_name(1))
    if item_1 != first or len(tokenizer) != first + num_items:
        raise ConfigError(
            "llm.base",
            f"{config.base} already has item tokens ({item_token_name(1)} is token {item_1}), as an LSC4Rec "
            "checkpoint does: give the pretrained model it was trained from instead.",
        )
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    title_tokens, separator = [], []
    if config.template == "titles":
        title_tokens = [tokenizer(f" {t}", add_special_tokens=False).input_ids for t in titles]
        separator = tokenizer("\n", add_special_tokens=False).input_ids
    template = PromptTemplate(
        config.template,
        num_items,
        first,
        config.max_len,
        [start],
        tokenizer.pad_token_id,
        separator,
        title_tokens,
    )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        target_modules=list(LORA_TARGETS),
        bias="none",
        trainable_token_indices={"embed_tokens": list(range(first, first + num_items))},
    )
    return ItemTokenLM(get_peft_model(model, lora), tokenizer, template)


def _start_token(tokenizer: PreTrainedTokenizerFast) -> int:
    """The token every prompt starts with: the base's BOS, else its EOS (as GPT-2's and Qwen2's models are fed).

    A prompt must hold a token before its first item: the prediction made there is the context-free one that
    :func:`llm_cloud.train.sequence_loss` may leave out, and an empty history must still be a prompt.
    """
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return int(token)
    raise ConfigError(
        "llm.base",
        "has neither a BOS nor an EOS token to start its prompts with; give a base whose tokenizer has one.",
    )


def _load_base(path: Path) -> tuple[nn.Module, PreTrainedTokenizerFast]:
    """The base model and tokenizer; a path that is not one is a ConfigError naming ``llm.base`` (``--base``)."""
    if not path.exists():
        raise ConfigError(
            "llm.base",
            f"must be scratch or an existing model folder or .gguf file, got {path}. Check the path.",
        )
    try:
        return _read_base(path)
    except (ImportError, MemoryError):  # a missing package or too little memory: not the folder's fault
        raise
    except Exception as exc:  # transformers, gguf and tokenizers raise many kinds for a non-model
        raise ConfigError(
            "llm.base",
            f"must be a Hugging Face causal LM folder or a .gguf file, got {path}, which does not load "
            f"({type(exc).__name__}: {exc}).",
        ) from None


def _read_base(path: Path) -> tuple[nn.Module, PreTrainedTokenizerFast]:
    if path.suffix != ".gguf":
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(
            path
        )
    # Unpack the GGUF blocks into a plain dense model (LoRA trains on it, vLLM serves its merge), then drop the
    # quantizer record so that save_pretrained writes ordinary safetensors.
    gguf = GgufConfig(gguf_file=path.name, dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, quantization_config=gguf, dtype=torch.float32
    )
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
