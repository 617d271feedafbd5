"""DIN: Deep Interest Network (Zhou et al., KDD 2018), used here as a next-item recommender."""

import torch
from torch import Tensor, nn

from clients.srm.base import SequentialRecommender, SRMConfig


class _ActivationUnit(nn.Module):
    """DIN's local activation unit: weight of history item ``h`` for candidate ``c``.

    An MLP on ``[h, c, h - c, h * c]``. Its first layer is applied in split form,
    ``(W_h + W_d) h + (W_c - W_d) c + W_p (h * c)``, which is algebraically the same linear map but never
    builds the ``[R, M, 4D]`` concatenation -- the largest tensor of the model otherwise.

    When every key meets the same ``M`` candidates (the catalogue, shared negatives), the split form is one
    matrix product: for key ``h`` the first layer is the affine map ``c -> c (diag(h) W_p^T + (W_c - W_d)^T)
    + (W_h + W_d) h + b``, so ``[c, 1]`` ``[M, D + 1]`` times the keys' stacked maps ``[D + 1, R * D]`` gives
    every pre-activation at once. That skips gathering ``[R, M, D]`` copies of the candidates and the sums
    and products over them, which made DIN's full-catalogue scoring 3.5 times as slow (BENCHMARKS.md,
    "Rerank latency").
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.first = nn.Linear(4 * hidden, hidden)
        self.rest = nn.Sequential(nn.PReLU(), nn.Linear(hidden, 1))

    def forward(self, keys: Tensor, candidates: Tensor) -> Tensor:
        """``keys`` ``[R, D]``; candidates per key ``[R, M, D]`` or shared ``[M, D]`` -> weights ``[R, M]``."""
        w_h, w_c, w_d, w_p = self.first.weight.chunk(4, dim=1)  # each [D, D]
        from_keys = keys @ (w_h + w_d).T + self.first.bias  # [R, D]
        if candidates.dim() == 2:
            per_key = keys[:, :, None] * w_p.T + (w_c - w_d).T  # [R, D, D]: c -> c @ per_key[r]
            maps = torch.cat([per_key, from_keys[:, None]], dim=1)  # [R, D + 1, D]
            ones = candidates.new_ones(candidates.size(0), 1)
            first = torch.cat([candidates, ones], dim=1) @ maps.permute(1, 0, 2).flatten(1)  # [M, R * D]
            return self.rest(first.view(candidates.size(0), keys.size(0), w_p.size(0))).squeeze(-1).T
        from_candidates = candidates @ (w_c - w_d).T  # [R, M, D]
        from_products = (keys[:, None] * candidates) @ w_p.T  # [R, M, D]
        return self.rest(from_keys[:, None] + from_candidates + from_products).squeeze(-1)


class DIN(SequentialRecommender):
    """Target-aware attention pooling of the history, then an MLP scoring ``[pooled, c, pooled * c]``.

    The user vector depends on the candidate, so there is no single user representation to dot with the
    catalogue: ``score``/``score_all`` go through the candidate-aware path (``score_all`` in chunks of
    items to bound memory), and ``encode``/``encode_all`` return the mean history embedding, a
    candidate-free summary kept only for callers that need some user vector.

    Design choices:

    * Attention weights are not softmax-normalised and the pooling is a sum, as in the paper, so the
      pooled vector keeps how strongly the history supports a candidate. Padding gets weight 0.
    * PReLU replaces the paper's Dice: Dice normalises with batch statistics, which would make a score
      depend on the chunk of items it was computed with.
    * DIN has no item order, so training position ``t`` scores the history truncated after ``t`` (a
      causal prefix). That costs ``O(P * M * T * D)`` (T: real items of the prefix), so only the last
      ``train_positions`` columns are trained and ce always uses the sampled softmax
      (``default_ce_negatives`` shared negatives when ``config.num_negatives`` is 0).
    """

    default_ce_negatives = 100
    train_positions = 8
    # Upper bound on the elements of one [R, items, D] tensor in ``score_all`` (~256 MiB in float32).
    chunk_elements = 1 << 26

    def __init__(self, config: SRMConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        self.attention = _ActivationUnit(config.hidden)
        layers: list[nn.Module] = []
        width = 3 * config.hidden
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.hidden), nn.PReLU(), nn.Dropout(config.dropout)]
            width = config.hidden
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def encode_all(self, history: Tensor) -> Tensor:
        """Mean embedding of the real items up to every position ``[B, T, D]``; zero at padding."""
        real = history != 0  # [B, T]
        sums = self.item_embedding(history).cumsum(dim=1)  # padding embeds to zero
        counts = real.cumsum(dim=1).clamp(min=1)[..., None]
        return sums / counts * real[..., None]

    def _position_states(self, history: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """History of row ``rows`` truncated after column ``cols`` (later columns set to pad) ``[P, T]``."""
        steps = torch.arange(history.size(1), device=history.device)
        return history[rows] * (steps[None] <= cols[:, None])

    def _score_states(self, states: Tensor, items: Tensor) -> Tensor:
        """Scores ``[P, M]`` of ``items`` (``[M]`` or ``[P, M]``) given histories ``states`` ``[P, T]``."""
        keys = self.item_embedding(states)  # [P, T, D]
        embedded = self.item_embedding(items)  # [M, D] or [P, M, D]
        candidates = embedded.expand(states.size(0), -1, -1)  # [P, M, D]
        # The activation unit runs on the R real history entries only: histories are mostly padding (~9 of
        # 50 items on Beauty, fewer in a truncated prefix), and padding gets weight 0 anyway.
        rows, cols = (states != 0).nonzero(as_tuple=True)  # [R] each
        weights = keys.new_zeros(states.size(0), candidates.size(1), states.size(1))  # [P, M, T]
        weights[rows, :, cols] = self.attention(
            keys[rows, cols], embedded if items.dim() == 1 else embedded[rows]
        )
        pooled = weights @ keys  # [P, M, D]
        return self.mlp(torch.cat([pooled, candidates, pooled * candidates], dim=-1)).squeeze(-1)

    def _score_catalogue(self, states: Tensor) -> Tensor:
        """Scores of items ``1..N`` ``[P, N]``, in chunks of items so memory stays bounded for large N."""
        per_item = max(1, int((states != 0).sum()) * self.config.hidden)  # elements of [R, 1, D]
        chunk = max(1, self.chunk_elements // per_item)
        items = torch.arange(1, self.num_items + 1, device=states.device)
        return torch.cat([self._score_states(states, part) for part in items.split(chunk)], dim=1)
