"""Neural matrix factorisation (GMF + MLP) over one shared embedding layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mixemb.models.base import MLPTower, RecModel, check_dropout, check_hidden, xavier_linear


class NeuMF(RecModel):
    """``bias + w · [e_user ⊙ e_item, MLP(concat_f e_f)]``.

    Fields 0 and 1 are the user and the item (GMF part); the MLP sees every field.
    Unlike the original NeuMF, GMF and MLP share one embedding layer (so one table is searched).
    """

    name = "neumf"
    min_fields = 2

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
        self.out = xavier_linear(self.embedding_dim + self.tower.out_features, 1, bias=False)

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(ids, values)
        e = self.embed(ids, values)
        gmf = e[:, 0] * e[:, 1]
        mlp = self.tower(e.flatten(1))
        return self.bias + self.out(torch.cat([gmf, mlp], dim=1)).squeeze(-1)
