"""``RaggedEmbedding``: serve a pruned table, reading only the values it kept."""

from __future__ import annotations

import torch
from torch import nn

from mixemb.ops import ragged_gather
from mixemb.ops.ragged import check_kernel_variant
from mixemb.ragged import RaggedTable


class RaggedEmbedding(nn.Module):
    """Embedding layer over a :class:`RaggedTable`: ``forward(ids (...) int32/int64,
    values (...) float or None) -> (..., K)`` in the table's value dtype, each row times its
    value when ``values`` is given.

    The table's tensors are buffers, so ``.to(device)`` and ``state_dict()`` carry them.

    table: the RaggedTable served (N rows, maximum dimension K).
    one_warp: default False; the CUDA gather kernel variant (``mixemb.ops.ragged_gather``),
        ignored on CPU.
    lookups_at_once: default None (the kernel's own); 1, 2, 4 or 8, the CUDA gather kernel
        variant, ignored on CPU.
    backend: default "auto"; or "extension", "reference" (``mixemb.ops.ragged_gather``).
    """

    def __init__(
        self,
        table: RaggedTable,
        *,
        one_warp: bool = False,
        lookups_at_once: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_kernel_variant(lookups_at_once)
        for name, tensor in table.tensors().items():
            self.register_buffer(name, tensor)
        self.embedding_dim = table.embedding_dim
        self.group_size = table.group_size
        self.one_warp = bool(one_warp)
        self.lookups_at_once = lookups_at_once
        self.backend = backend

    @classmethod
    def from_dense(
        cls,
        pruned: torch.Tensor,
        *,
        group_size: int = 16,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> RaggedEmbedding:
        """From a pruned (N, K) table (zeros are pruned entries); group_size and dtype go to
        ``RaggedTable.from_dense``, the other keywords to the constructor."""
        return cls(RaggedTable.from_dense(pruned, group_size=group_size, dtype=dtype), **kwargs)

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
        out = ragged_gather(
            self.table,
            ids,
            one_warp=self.one_warp,
            lookups_at_once=self.lookups_at_once,
            backend=self.backend,
        )
        return out if values is None else out * values.unsqueeze(-1).to(out.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, nnz={self.values.numel()}, "
            f"dtype={self.values.dtype}, nbytes={self.nbytes()}"
            + (", one_warp=True" if self.one_warp else "")
            + (f", lookups_at_once={self.lookups_at_once}" if self.lookups_at_once else "")
        )
