"""``RaggedEmbedding``: serve a pruned table, reading only the values it kept."""

from __future__ import annotations

import torch
from torch import nn

from mixemb.ops import ragged_gather
from mixemb.ragged import RaggedTable


class RaggedEmbedding(nn.Module):
    """Embedding layer over a :class:`RaggedTable`: ``forward(ids (...)) -> (..., K)``.

    The table's tensors are buffers, so ``.to(device)`` and ``state_dict()`` carry them.
    """

    def __init__(self, table: RaggedTable, *, backend: str = "auto") -> None:
        super().__init__()
        for name, tensor in table.tensors().items():
            self.register_buffer(name, tensor)
        self.embedding_dim = table.embedding_dim
        self.group_size = table.group_size
        self.backend = backend

    @classmethod
    def from_dense(cls, pruned: torch.Tensor, **kwargs) -> RaggedEmbedding:
        return cls(RaggedTable.from_dense(pruned, **kwargs))

    @property
    def table(self) -> RaggedTable:
        return RaggedTable(
            self.masks,
            self.values,
            self.group_offsets,
            self.embedding_dim,
            self.group_size,
            validate=False,
        )

    @property
    def num_embeddings(self) -> int:
        return self.masks.shape[0]

    def nbytes(self) -> int:
        """Bytes of the stored table (values + metadata); equals the sum of its buffers."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        out = ragged_gather(self.table, ids, backend=self.backend)
        return out if values is None else out * values.unsqueeze(-1).to(out.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, nnz={self.values.numel()}, "
            f"dtype={self.values.dtype}, nbytes={self.nbytes()}"
        )
