"""``MaskedEmbedding``: a table whose pruned entries stay zero while it trains.

Used to fine-tune a pruned model with its mask fixed, and by the baselines that fix
per-block dimensions up front (random search, MDE). ``forward(ids) = weight[ids] ⊙
mask[ids]`` so pruned entries get no gradient and never come back.
"""

from __future__ import annotations

import torch
from torch import nn

from mixemb.nn.soft_select import WeightShape


class MaskedEmbedding(WeightShape, nn.Module):
    """weight: (N, K) parameter (copied from ``init``); mask: (N, K) bool buffer."""

    def __init__(self, init: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        if init.shape != mask.shape or init.dim() != 2:
            raise ValueError(
                f"init and mask must be the same (N, K) shape, got {tuple(init.shape)} "
                f"and {tuple(mask.shape)}"
            )
        self.weight = nn.Parameter(init.detach().clone() * mask)
        self.register_buffer("mask", mask.to(torch.bool))

    @classmethod
    def from_block_dims(
        cls, num_embeddings: int, dim: int, boundaries: torch.Tensor, block_dims: list[int]
    ) -> MaskedEmbedding:
        """Xavier-normal table where block l keeps its first ``block_dims[l]`` dimensions."""
        if len(block_dims) != boundaries.numel() - 1:
            raise ValueError(f"need {boundaries.numel() - 1} block dims, got {len(block_dims)}")
        if any(not 0 <= d <= dim for d in block_dims):
            raise ValueError(f"block dims must be in [0, {dim}], got {block_dims}")
        counts = boundaries[1:] - boundaries[:-1]
        per_row = torch.repeat_interleave(torch.tensor(block_dims), counts)
        mask = torch.arange(dim).unsqueeze(0) < per_row.unsqueeze(1)
        weight = torch.empty(num_embeddings, dim)
        nn.init.xavier_normal_(weight)
        return cls(weight, mask)

    def kept(self) -> int:
        return int(self.mask.sum())

    def masked_weight(self) -> torch.Tensor:
        """(N, K) float, detached: the table with its pruned entries zero (what it stores)."""
        return self.weight.detach() * self.mask

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        flat = ids.long()
        out = self.weight[flat] * self.mask[flat]
        return out if values is None else out * values.unsqueeze(-1).to(out.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, kept={self.kept()}"
