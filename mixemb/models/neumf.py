"""Neural matrix factorisation (GMF + MLP) over one shared embedding layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mixemb.models.base import RecModel, check_dropout, check_hidden


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
        self.add_tower(hidden, dropout, out_extra=self.embedding_dim)

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(ids, values)
        e = self.embed(ids, values)
        gmf = e[:, 0] * e[:, 1]
        mlp = self.tower(e.flatten(1))
        return self.bias + self.out(torch.cat([gmf, mlp], dim=1)).squeeze(-1)
