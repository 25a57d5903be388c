"""Factorisation machine."""

from __future__ import annotations

import torch
from torch import nn

from mixemb.models.base import RecModel, make_first_order

PAIRWISE_REDUCE = ("sum", "mean")


def check_reduce(pairwise_reduce: str) -> str:
    if pairwise_reduce not in PAIRWISE_REDUCE:
        raise ValueError(
            f"pairwise_reduce must be one of {PAIRWISE_REDUCE}, got {pairwise_reduce!r}"
        )
    return pairwise_reduce


def fm_pairwise(e: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """``Σ_{f<g} <e_f, e_g>`` for ``e`` (B, F, K), as ``0.5·Σ_k((Σ_f e_fk)² − Σ_f e_fk²)``.

    ``reduce="mean"`` averages over K instead of summing (the DNIS authors' code).
    """
    s = e.sum(1)
    per_k = 0.5 * (s * s - (e * e).sum(1))
    return per_k.mean(-1) if reduce == "mean" else per_k.sum(-1)


class FM(RecModel):
    """``bias + Σ_f w[id_f]·v_f + Σ_{f<g} <e_f, e_g>`` (embeddings already times values)."""

    name = "fm"
    absorbs_rotation = True

    def __init__(
        self,
        embedding: nn.Module,
        *sizes: int,
        pairwise_reduce: str = "sum",
    ):
        pairwise_reduce = check_reduce(pairwise_reduce)
        super().__init__(embedding, *sizes, pairwise_reduce=pairwise_reduce)
        self.pairwise_reduce = pairwise_reduce
        self.first_order = make_first_order(self.num_features)

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        self.check_input(ids, values)
        e = self.embed(ids, values)
        pair = fm_pairwise(e, self.pairwise_reduce)
        return self.bias + self.first_order_term(ids, values) + pair
