"""MLP over the concatenated field embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mixemb.models.base import MLPTower, RecModel, check_dropout, check_hidden, xavier_linear


class MLP(RecModel):
    """``bias + w · MLP(concat_f e_f)``; ReLU hidden layers with dropout."""

    name = "mlp"

    def __init__(
        self,
        embedding: nn.Module,
        *sizes: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
    ):
        hidden, dropout = check_hidden(hidden), check_dropout(dropout)
        super().__init__(embedding, *sizes, hidden=hidden, dropout=dropout)
        self.tower = MLPTower(self.num_fields * self.embedding_dim, hidden, dropout)
        self.out = xavier_linear(self.tower.out_features, 1, bias=False)

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(ids, values)
        e = self.embed(ids, values)
        return self.bias + self.out(self.tower(e.flatten(1))).squeeze(-1)
