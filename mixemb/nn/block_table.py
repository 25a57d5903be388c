"""``BlockTableEmbedding``: serve a table pruned to one column set per frequency block."""

from __future__ import annotations

import torch
from torch import nn

from mixemb.block_table import BlockTable, serving_index
from mixemb.ops.block_table import BACKENDS, block_gather


class BlockTableEmbedding(nn.Module):
    """Embedding layer over a :class:`BlockTable`: ``forward(ids (...) int32/int64,
    values (...) float or None) -> (..., K)`` in ``out_dtype`` (default the table's rows'
    dtype: its values', float32 for int8), each row times its value when ``values`` is
    given.

    The table's tensors are buffers (an int8 table's ``scale_bias`` too), so ``.to(device)``
    and ``state_dict()`` carry them; its serving index (``BlockTable.serving_index``) is
    kept beside them as non-persistent buffers, derived again on load.

    table: the BlockTable served (N rows, K columns, L blocks).
    out_dtype: default None; a float dtype for the rows (torch.float32 serves an fp16 or
        bf16 table to a float32 model).
    backend: default "auto" (C++ on CPU, Triton on CUDA); or "extension", "torch",
        "triton" (``mixemb.ops.block_table.block_gather``).
    """

    def __init__(
        self, table: BlockTable, *, out_dtype: torch.dtype | None = None, backend: str = "auto"
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if out_dtype is not None and not out_dtype.is_floating_point:
            raise ValueError(f"out_dtype must be a float dtype, got {out_dtype}")
        for name, tensor in table.tensors().items():
            self.register_buffer(name, tensor)
        layout, rank = table.serving_index()
        self.register_buffer("layout", layout, persistent=False)
        self.register_buffer("rank", rank, persistent=False)
        self.embedding_dim = table.embedding_dim
        self.out_dtype = out_dtype
        self.backend = backend

    @classmethod
    def from_block_mask(
        cls,
        pruned: torch.Tensor,
        boundaries: torch.Tensor,
        block_mask: torch.Tensor,
        *,
        dtype: torch.dtype | str | None = None,
        **kwargs,
    ) -> BlockTableEmbedding:
        """From a pruned (N, K) table, its boundaries (L+1,) and block mask (L, K)
        (``BlockTable.from_block_mask``, dtype "int8" for an int8 table); the other
        keywords go to the constructor."""
        return cls(BlockTable.from_block_mask(pruned, boundaries, block_mask, dtype), **kwargs)

    @property
    def table(self) -> BlockTable:
        return BlockTable(
            self.boundaries,
            self.mask_bits,
            self.values,
            self.embedding_dim,
            scale_bias=self._buffers.get("scale_bias"),
            validate=False,
            index=(self.layout, self.rank),
        )

    @property
    def num_embeddings(self) -> int:
        return int(self.boundaries[-1])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The incoming buffers are validated as one table before any is copied in: a
        # file's boundaries or mask must not reach the gather unchecked (a buffer copy
        # only checks shapes). A missing key keeps the current buffer (strict=False).
        incoming = {
            name: state_dict.get(prefix + name, current)
            for name, current in self.table.tensors().items()
        }
        try:
            BlockTable(**incoming, embedding_dim=self.embedding_dim)
        except (TypeError, ValueError) as err:
            where = prefix.rstrip(".") or "the module"
            raise ValueError(f"invalid block table in {where}'s state: {err}") from None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        layout, rank = serving_index(self.boundaries, self.mask_bits, self.embedding_dim)
        self.layout, self.rank = layout, rank

    def nbytes(self) -> int:
        """Bytes of the stored table (``BlockTable.nbytes``; the serving index is derived)."""
        return self.table.nbytes()

    def forward(self, ids: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
        out = block_gather(self.table, ids, out_dtype=self.out_dtype, backend=self.backend)
        return out if values is None else out * values.unsqueeze(-1).to(out.dtype)

    def extra_repr(self) -> str:
        table = self.table
        return (
            f"{table.num_embeddings}, {self.embedding_dim}, blocks={table.num_blocks}, "
            f"dims={table.block_dims()}, dtype={table.value_dtype}, nbytes={self.nbytes()}"
            + ("" if self.out_dtype is None else f", out_dtype={self.out_dtype}")
            + ("" if self.backend == "auto" else f", backend={self.backend!r}")
        )
