"""DeepFM: a factorisation machine and an MLP sharing one embedding layer."""

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
from mixemb.models.fm import check_reduce, fm_pairwise


class DeepFM(RecModel):
    """``bias + Σ_f w[id_f]·v_f + Σ_{f<g} <e_f, e_g> + w_out · MLP(concat_f e_f)``."""

    name = "deepfm"
    absorbs_rotation = True

    def __init__(
        self,
        embedding: nn.Module,
        *sizes: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.0,
        pairwise_reduce: str = "sum",
    ):
        hidden, dropout = check_hidden(hidden), check_dropout(dropout)
        pairwise_reduce = check_reduce(pairwise_reduce)
        super().__init__(
            embedding,
            *sizes,
            hidden=hidden,
            dropout=dropout,
            pairwise_reduce=pairwise_reduce,
        )
        self.pairwise_reduce = pairwise_reduce
        self.first_order = make_first_order(self.num_features)
        self.add_tower(hidden, dropout)

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(ids, values)
        e = self.embed(ids, values)
        pair = fm_pairwise(e, self.pairwise_reduce)
        deep = self.out(self.tower(e.flatten(1))).squeeze(-1)
        return self.bias + self.first_order_term(ids, values) + pair + deep
