"""Serving ops over a :class:`mixemb.ragged.RaggedTable` (pruned, padding-free tables)."""

from __future__ import annotations

import torch

from mixemb.ragged import (
    RaggedTable,
    ragged_bag_reference,
    ragged_dot_reference,
    ragged_gather_reference,
)

BACKENDS = ("auto", "reference")


def ragged_gather(table: RaggedTable, ids: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """Dense rows of a ragged table.

    table: RaggedTable with N rows of maximum dimension K.
    ids: (...) int32/int64 in [0, N); an out-of-range id raises IndexError naming it.
    backend: "reference" (torch ops) or "auto" (the fastest available; today the reference).
    Returns (..., K) in the table's value dtype, zeros at pruned dimensions.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids must be int32 or int64, got {ids.dtype}")
    return ragged_gather_reference(table, ids)


def ragged_bag(
    table: RaggedTable,
    ids: torch.Tensor,
    offsets: torch.Tensor,
    *,
    mode: str = "sum",
    per_sample_weights: torch.Tensor | None = None,
    include_last_offset: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Pooled bags (``nn.EmbeddingBag`` semantics) over a ragged table → (B, K)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return ragged_bag_reference(
        table,
        ids,
        offsets,
        mode=mode,
        per_sample_weights=per_sample_weights,
        include_last_offset=include_last_offset,
    )


def ragged_dot(
    table_a: RaggedTable,
    ids_a: torch.Tensor,
    table_b: RaggedTable,
    ids_b: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """MF-style scores (B,) float32 over the dimensions both rows keep."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return ragged_dot_reference(table_a, ids_a, table_b, ids_b)
