"""Matrix factorisation: ``bias + b[u] + b[i] + <e_u, e_i>``."""

from __future__ import annotations

import torch
from torch import nn

from mixemb.models.base import RecModel, make_first_order


class MF(RecModel):
    """Biased MF. Fields 0 and 1 are the user and the item; further fields (if any) only add
    first-order terms. Only the first two fields are passed to the embedding layer."""

    name = "mf"
    absorbs_rotation = True
    min_fields = 2

    def __init__(self, embedding: nn.Module, *sizes: int):
        super().__init__(embedding, *sizes)
        self.first_order = make_first_order(self.num_features)

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(ids, values)
        e = self.embed(ids[:, :2], None if values is None else values[:, :2])
        dot = (e[:, 0] * e[:, 1]).sum(-1)
        return self.bias + self.first_order_term(ids, values) + dot
