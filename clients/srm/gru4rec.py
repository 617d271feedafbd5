"""GRU4Rec: session-based recommendation with recurrent neural networks (Hidasi et al., ICLR 2016)."""

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from clients.srm.base import SequentialRecommender, SRMConfig


class GRU4Rec(SequentialRecommender):
    """Item embedding -> dropout -> GRU -> linear; next-item scores are dot products with item embeddings.

    Left padding cannot simply be fed to the GRU: even a zero input moves its hidden state (through the
    biases), so the output would depend on how much padding the batch happened to need. Each row is
    therefore rotated to right padding and packed, so the GRU starts at the oldest real item, and the
    outputs are rotated back. This assumes the real items of a row are contiguous (plain left padding).

    The output side is tied to the input item embedding, like SASRec here; the original GRU4Rec used a
    separate output matrix, which doubles the parameters of a small client model.
    """

    def __init__(self, config: SRMConfig, num_items: int) -> None:
        super().__init__(config, num_items)
        self.dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(
            config.hidden,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,  # torch applies it between layers only
        )
        self.project = nn.Linear(config.hidden, config.hidden)

    def encode_all(self, history: Tensor) -> Tensor:
        """GRU output after every position ``[B, T, D]``; zero at padding."""
        length = history.size(1)
        real = history != 0  # [B, T]
        lengths = real.sum(dim=1)  # [B]
        pads = (length - lengths)[:, None]  # [B, 1]
        steps = torch.arange(length, device=history.device)[None]  # [1, T]
        right_padded = history.gather(1, (steps + pads) % length)  # column j <- left column j + pads
        packed = pack_padded_sequence(
            self.dropout(self.item_embedding(right_padded)),
            lengths.clamp(min=1).cpu(),  # an all-padding row reads one pad; its output is zeroed below
            batch_first=True,
            enforce_sorted=False,
        )
        output, _ = self.gru(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=length)  # [B, T, D]
        back = ((steps - pads) % length)[..., None].expand_as(output)  # left column i <- right i - pads
        return self.project(output.gather(1, back)) * real[..., None]
