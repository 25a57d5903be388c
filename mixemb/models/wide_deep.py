"""Wide & Deep: a first-order linear part plus an MLP over the concatenated embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mixemb.models.base import (
    RecModel,
    check_dropout,
    check_hidden,
    make_first_order,
)


class WideDeep(RecModel):
    """``bias + Σ_f w[id_f]·v_f + w_out · MLP(concat_f e_f)``."""

    name = "wide_deep"
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
        self.first_order = make_first_order(self.num_features)
        self.add_tower(hidden, dropout)

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(ids, values)
        e = self.embed(ids, values)
        deep = self.out(self.tower(e.flatten(1))).squeeze(-1)
        return self.bias + self.first_order_term(ids, values) + deep
