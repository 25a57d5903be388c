"""MLP over the concatenated field embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mixemb.models.base import RecModel, check_dropout, check_hidden


class MLP(RecModel):
    """``bias + w · MLP(concat_f e_f)``; ReLU hidden layers with dropout."""

    name = "mlp"
    absorbs_rotation = True

    def __init__(
        self,
        embedding: nn.Module,
        *sizes: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
    ):
        hidden, dropout = check_hidden(hidden), check_dropout(dropout)
        super().__init__(embedding, *sizes, hidden=hidden, dropout=dropout)
        self.add_tower(hidden, dropout)

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(ids, values)
        e = self.embed(ids, values)
        return self.bias + self.out(self.tower(e.flatten(1))).squeeze(-1)
