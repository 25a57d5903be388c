"""``RaggedEmbedding``: serve a pruned table, reading only the values it kept."""

from __future__ import annotations

import torch
from torch import nn

from mixemb.ops import ragged_gather
from mixemb.ops.ragged import check_kernel_variant
from mixemb.ragged import RaggedTable


class RaggedEmbedding(nn.Module):
    """Embedding layer over a :class:`RaggedTable`: ``forward(ids (...) int32/int64,
    values (...) float or None) -> (..., K)`` in ``out_dtype`` (default: the table's value
    dtype, float32 for an int8 table, dequantized by the op), each row times its value when
    ``values`` is given.

    The table's tensors are buffers (an int8 table's ``scale_bias`` too), so
    ``.to(device)`` and ``state_dict()`` carry them.

    table: the RaggedTable served (N rows, maximum dimension K).
    one_warp: default False; the CUDA gather kernel variant (``mixemb.ops.ragged_gather``),
        ignored on CPU.
    lookups_at_once: default None (the kernel's own); 1, 2, 4 or 8, the CUDA gather kernel
        variant, ignored on CPU.
    backend: default "auto"; or "extension", "reference" (``mixemb.ops.ragged_gather``).
    out_dtype: default None; a float dtype the rows are cast to (an fp16 table serving an
        fp32 model: float32).
    """

    def __init__(
        self,
        table: RaggedTable,
        *,
        out_dtype: torch.dtype | None = None,
        one_warp: bool = False,
        lookups_at_once: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_kernel_variant(lookups_at_once)
        if out_dtype is not None and not (
            isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point
        ):
            raise ValueError(f"out_dtype must be a float torch dtype or None, got {out_dtype!r}")
        self.out_dtype = out_dtype
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
        dtype: torch.dtype | str | None = None,
        **kwargs,
    ) -> RaggedEmbedding:
        """From a pruned (N, K) table (zeros are pruned entries); group_size and dtype go to
        ``RaggedTable.from_dense`` (dtype ``"int8"``: an int8 table), the other keywords to
        the constructor."""
        return cls(RaggedTable.from_dense(pruned, group_size=group_size, dtype=dtype), **kwargs)

    @property
    def table(self) -> RaggedTable:
        return RaggedTable(
            self.masks,
            self.values,
            self.group_offsets,
            self.embedding_dim,
            self.group_size,
            scale_bias=self._buffers.get("scale_bias"),
            validate=False,
        )

    @property
    def num_embeddings(self) -> int:
        return self.masks.shape[0]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The incoming buffers are validated as one table before any is copied in: a
        # file's group_offsets or masks must not reach the kernels unchecked (a buffer
        # copy only checks shapes). A missing key keeps the current buffer (strict=False).
        incoming = {
            name: state_dict.get(prefix + name, current)
            for name, current in self.table.tensors().items()
        }
        if all(isinstance(t, torch.Tensor) for t in incoming.values()):
            try:
                RaggedTable(
                    **incoming, embedding_dim=self.embedding_dim, group_size=self.group_size
                )
            except ValueError as err:
                where = prefix.rstrip(".") or "the module"
                raise ValueError(f"invalid ragged table in {where}'s state: {err}") from None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        if self.out_dtype is not None:
            out = out.to(self.out_dtype)
        return out if values is None else out * values.unsqueeze(-1).to(out.dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, nnz={self.values.numel()}, "
            f"dtype={'int8' if 'scale_bias' in self._buffers else self.values.dtype}, "
            f"nbytes={self.nbytes()}"
            + ("" if self.out_dtype is None else f", out_dtype={self.out_dtype}")
            + (", one_warp=True" if self.one_warp else "")
            + (f", lookups_at_once={self.lookups_at_once}" if self.lookups_at_once else "")
        )
