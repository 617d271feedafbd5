"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clients.srm.base import SequentialRecommender, SRMConfig


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then SASRec's point-wise feed-forward.

    Pre-LN (rather than the original post-LN) trains stably without warm-up, which matters for the
    short client-side runs these models get.
    """

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention_dropout = dropout
        self.attention_norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.feed_forward_norm = nn.LayerNorm(hidden)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """``x`` ``[B, T, D]``; ``allowed`` ``[B, 1, T, T]``, True where a query may attend to a key."""
        batch, length, hidden = x.shape
        qkv = self.qkv(self.attention_norm(x)).view(batch, length, 3, self.heads, hidden // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, T, D / heads]
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.attention_dropout if self.training else 0.0
        )
        x = x + self.dropout(self.out(attended.transpose(1, 2).reshape(batch, length, hidden)))
        return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))


class SASRec(SequentialRecommender):
    """Causal transformer over the history; the next-item score is a dot product with the item embedding.

    Positions are aligned to the right end: the newest item always gets position ``max_len - 1``
    whatever the amount of left padding, so the same history scores the same in any batch (and the
    position of an item encodes its recency, which is what matters for the next item).

    The output layer is tied to the input item embedding, as in SASRec: fewer parameters for a small
    client model, and rare items still get gradients through the input side.
    """

    def __init__(self, config: SRMConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        self.positions = nn.Embedding(config.max_len, config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            _Block(config.hidden, config.heads, config.dropout) for _ in range(config.layers)
        )
        self.final_norm = nn.LayerNorm(config.hidden)

    def encode_all(self, history: Tensor) -> Tensor:
        """Encode every position with the transformer ``[B, T, D]``; zero at padding.

        Attention is causal and skips padded keys. A padded query would then have no key at all (softmax
        over nothing is NaN), so every query may always attend to itself; padded outputs are zeroed after
        each block, so this never leaks into real positions.
        """
        length = history.size(1)
        if length > self.config.max_len:
            raise ValueError(f"history length must be <= max_len ({self.config.max_len}), got {length}.")
        real = history != 0  # [B, T]
        steps = torch.arange(length, device=history.device)
        x = self.item_embedding(history) * self.config.hidden**0.5
        x = x + self.positions(steps + self.config.max_len - length)
        x = self.dropout(x) * real[..., None]
        causal = steps[:, None] >= steps[None, :]  # [T, T], query row may see key column
        allowed = causal & (real[:, None, :] | torch.eye(length, dtype=torch.bool, device=history.device))
        allowed = allowed[:, None]  # [B, 1, T, T], broadcast over heads
        for block in self.blocks:
            x = block(x, allowed) * real[..., None]
        return self.final_norm(x) * real[..., None]
