"""Prompt templates: how a history of item ids becomes the token ids the LLM reads.

Both engines build prompts here (the vLLM engine sends the token ids, so no tokenizer runs at serving time).
Item ``i`` is token ``first_item_token + i - 1``: the item tokens form one contiguous id range, which makes
restricting the next-token distribution to items a slice (DESIGN.md section 4).

``items``: ``prefix`` then the newest ``max_len`` item tokens. ``titles``: ``prefix`` then, per item, its
token, its title's tokens and ``separator``, so the next token after a separator is the next item token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

TEMPLATE_FILE = "lsc4rec_template.json"


@dataclass(frozen=True)
class PromptTemplate:
    """Maps histories to token ids; saved as ``lsc4rec_template.json`` in every checkpoint."""

    kind: str  # items | titles
    num_items: int  # N; items are 1..N
    first_item_token: int  # token id of item 1
    max_len: int  # newest history items put into a prompt
    prefix: list[int] = field(default_factory=list)  # token ids before the first item (a BOS token)
    pad_token: int = 0  # token id used to pad batches (never attended to)
    separator: list[int] = field(default_factory=list)  # titles: token ids after each title
    title_tokens: list[list[int]] = field(default_factory=list)  # titles: title_tokens[i - 1] for item i

    def item_token(self, item: int) -> int:
        return self.first_item_token + item - 1

    def encode(self, history: Sequence[int]) -> list[int]:
        """Token ids of the prompt for ``history`` (item ids, oldest first); the newest ``max_len`` are kept."""
        return self.encode_all(list(history)[-self.max_len :])

    def encode_all(self, items: Sequence[int]) -> list[int]:
        """Token ids for every item given (training windows choose their own span)."""
        ids = list(self.prefix)
        for item in items:
            ids.append(self.item_token(int(item)))
            if self.kind == "titles":
                ids.extend(self.title_tokens[int(item) - 1])
                ids.extend(self.separator)
        return ids

    def max_prompt_tokens(self) -> int:
        """Upper bound on a prompt's length (the model's context must hold it)."""
        per_item = 1
        if self.kind == "titles":
            per_item += max((len(t) for t in self.title_tokens), default=0) + len(self.separator)
        return len(self.prefix) + self.max_len * per_item

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder, TEMPLATE_FILE).write_text(json.dumps(asdict(self)))
