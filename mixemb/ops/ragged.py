"""Serving ops over a :class:`mixemb.ragged.RaggedTable` (pruned, padding-free tables)."""

from __future__ import annotations

import torch

from mixemb.ragged import RaggedTable, ragged_gather_reference

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
