"""Configuration and shared training/scoring logic of the small sequential recommenders (SRMs).

Conventions shared by every model: item ids are ``1..N`` and ``0`` is padding; a history is a
LongTensor ``[B, T]`` left-padded with ``0`` so the newest item sits in the last column. Shape letters:
B batch, T history length, K candidates, N catalogue size, D hidden size, P trained positions, M items
scored per position.
"""

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsc4rec.config import SRMConfig

# The state-dict key of the item table (row i = item i, row 0 = padding; tied with the output layer).
ITEM_ROWS = "item_embedding.weight"


class SequentialRecommender(nn.Module, ABC):
    """Base of the SRMs: next-item scoring and the training losses, written once for all models.

    Subclasses implement ``encode_all``. Scoring and the losses go through two hooks so that one loss
    implementation serves both kinds of model:

    * ``_position_states(history, rows, cols)`` -- whatever a model needs to score items as the next
      item after ``history[rows, cols]``: the hidden state ``[P, D]`` for dot-product models (default),
      the history truncated at that position ``[P, T]`` for DIN, whose user vector depends on the item.
    * ``_score_states(states, items)`` -- scores of ``items`` (``[M]`` shared, or ``[P, M]``) -> ``[P, M]``.

    Losses only visit positions with a non-padding target (gathered first): histories are short (~9
    items on Amazon Beauty against ``max_len`` 50), so this skips most of the padded grid.
    """

    # Negatives of the ce loss when ``config.num_negatives`` is 0; 0 means the full softmax.
    default_ce_negatives: int = 0
    # Train only on the last this many columns (None: all columns); bounds DIN's per-position cost.
    train_positions: int | None = None

    def __init__(self, config: SRMConfig, num_items: int) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items!r}.")
        self.config = config
        self.num_items = num_items
        self.item_embedding = nn.Embedding(num_items + 1, config.hidden, padding_idx=0)
        # Unit-norm item vectors keep the initial dot-product logits O(1) (torch's N(0, 1) gives O(sqrt D)).
        nn.init.normal_(self.item_embedding.weight, std=config.hidden**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    @abstractmethod
    def encode_all(self, history: Tensor) -> Tensor:
        """User representation after every position: ``[B, T]`` -> ``[B, T, D]``, zero at padding.

        The output at column ``t`` may depend only on ``history[:, :t + 1]`` (causality), which is what
        lets one forward pass train on every position at once.
        """

    def score(self, history: Tensor, candidates: Tensor) -> Tensor:
        """Scores of ``candidates`` ``[B, K]`` as the next item after ``history`` ``[B, T]`` -> ``[B, K]``."""
        return self._score_states(self._last_states(history), candidates)

    def score_all(self, history: Tensor) -> Tensor:
        """Scores of the whole catalogue ``[B, N + 1]``; column 0 (padding) is ``-inf``, never ranked."""
        scores = self._score_catalogue(self._last_states(history))  # [B, N]
        return torch.cat([scores.new_full((scores.size(0), 1), float("-inf")), scores], dim=1)

    def loss(self, batch: dict[str, Tensor], hard_weight: float = 1.0) -> Tensor:
        """Mean next-item loss over the non-padding targets of ``batch``.

        Parameters
        ----------
        batch
            ``"history"`` ``[B, T]`` inputs and ``"target"`` ``[B, T]`` next item at each position (0 =
            ignore). Optional ``"hard_negatives"`` ``[B, K]`` (0 = pad): items the target must outrank at
            the last position, e.g. the LLM's candidate list in collaborative training. A hard negative
            equal to the target is masked out. They add a second term: ce adds the listwise
            ``-log softmax([s_target, s_hard...])[0]``; bce adds ``-sum log sigmoid(-s_hard)``.
        hard_weight
            Weight of the hard-negative term against the next-item loss (0 drops it). The term is a mean over
            the rows that hold a hard negative, so a row's weight does not depend on how many plain windows
            share its batch.

        Returns
        -------
        Tensor
            Scalar loss. A negative that equals the target never counts against it.
        """
        history, target = batch["history"], batch["target"]
        trained = target != 0
        if self.train_positions is not None:
            trained[:, : -self.train_positions] = False
        rows, cols = trained.nonzero(as_tuple=True)  # [P] each
        if rows.numel() == 0:
            raise ValueError("batch must contain a non-padding target, got none.")
        positives = target[rows, cols]  # [P]
        states = self._position_states(history, rows, cols)
        if self.config.loss == "ce":
            loss = self._cross_entropy(states, positives)
        else:
            negatives = self._draw((rows.numel(), self.config.num_negatives or 1), history.device)
            loss = self._binary_cross_entropy(states, positives, negatives)
        hard = batch.get("hard_negatives")
        if hard is not None and hard_weight > 0:
            last = (cols == history.size(1) - 1).nonzero(as_tuple=True)[0]  # indices into P
            lists = hard[rows[last]]
            listed = ((lists != 0) & (lists != positives[last, None])).any(dim=1)  # rows with a real one
            last, lists = last[listed], lists[listed]
            if last.numel() > 0:
                hard_loss = self._hard_negative_loss(states[last], positives[last], lists)
                loss = loss + hard_weight * hard_loss
        return loss

    def _position_states(self, history: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """Hidden state ``[P, D]`` after ``history[rows, cols]``; DIN overrides."""
        return self.encode_all(history)[rows, cols]

    def _score_states(self, states: Tensor, items: Tensor) -> Tensor:
        """Dot products with the (tied) item embeddings: items ``[M]`` or ``[P, M]`` -> ``[P, M]``."""
        if items.dim() == 1:
            return states @ self.item_embedding(items).T
        return torch.einsum("pd,pmd->pm", states, self.item_embedding(items))

    def _score_catalogue(self, states: Tensor) -> Tensor:
        """Scores of items ``1..N`` -> ``[P, N]``; one matmul for dot-product models, DIN chunks it."""
        return states @ self.item_embedding.weight[1:].T

    def _last_states(self, history: Tensor) -> Tensor:
        rows = torch.arange(history.size(0), device=history.device)
        return self._position_states(history, rows, torch.full_like(rows, history.size(1) - 1))

    def _draw(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """Uniform item ids in ``1..N``; uniform, so sampled softmax needs no log-Q correction term."""
        return torch.randint(1, self.num_items + 1, shape, device=device)

    def _cross_entropy(self, states: Tensor, positives: Tensor) -> Tensor:
        """Softmax over the whole catalogue, or over the target and ``sampled`` uniform negatives shared by all."""
        sampled = self.config.num_negatives or self.default_ce_negatives
        if sampled == 0:
            return F.cross_entropy(self._score_catalogue(states), positives - 1)
        negatives = self._draw((sampled,), positives.device)
        target_scores = self._score_states(states, positives[:, None])  # [P, 1]
        negative_scores = self._score_states(states, negatives)  # [P, M]
        negative_scores = negative_scores.masked_fill(negatives[None] == positives[:, None], float("-inf"))
        return -torch.cat([target_scores, negative_scores], dim=1).log_softmax(dim=1)[:, 0].mean()

    def _binary_cross_entropy(self, states: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        """SASRec's loss, summed over a position's negatives and averaged over positions."""
        scores = self._score_states(states, torch.cat([positives[:, None], negatives], dim=1))  # [P, 1 + n]
        real = negatives != positives[:, None]
        return (-F.logsigmoid(scores[:, 0]) - (F.logsigmoid(-scores[:, 1:]) * real).sum(dim=1)).mean()

    def _hard_negative_loss(self, states: Tensor, positives: Tensor, hard: Tensor) -> Tensor:
        """Extra last-position term making the target outrank ``hard`` ``[L, K]`` (see ``loss``)."""
        real = (hard != 0) & (hard != positives[:, None])  # [L, K]
        scores = self._score_states(states, torch.cat([positives[:, None], hard], dim=1))  # [L, 1 + K]
        if self.config.loss == "ce":
            kept = torch.cat([torch.ones_like(real[:, :1]), real], dim=1)
            return -scores.masked_fill(~kept, float("-inf")).log_softmax(dim=1)[:, 0].mean()
        return -(F.logsigmoid(-scores[:, 1:]) * real).sum(dim=1).mean()
