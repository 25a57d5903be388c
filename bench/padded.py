"""The padded baselines of the benches: what a plain (N, K) table does for each op.

Providers (the benches name them so): ``padded``, the eager torch op (``F.embedding``,
``F.embedding_bag``, gather + multiply + sum); ``padded-compile``, ``torch.compile`` of
the expressions below (one fused kernel each for the bag and the dot); ``padded-triton``,
the hand-written Triton gather of ``padded_triton.py`` (CUDA only: the interpreter is far
too slow for a bench shape). Each bench's ``vs_best_padded`` column divides every time by
the fastest of its op's padded rows (``is_padded``).

Their ideal bytes are ``mixemb.reference``'s ``padded_gather_bytes``, ``padded_bag_bytes``
and ``padded_dot_bytes``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PREFIX = "padded"


def is_padded(row: dict) -> bool:
    """Whether a result row is one of a padded baseline (its provider starts "padded")."""
    return row["provider"].startswith(PREFIX)


def gather(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """weight: (N, K); ids: (...) int. Returns (..., K) = weight[ids]."""
    return F.embedding(ids, weight)


def bag_sum(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """weight: (N, K); ids: (B, F) int, one bag of F lookups per sample. Returns (B, K),
    each bag's rows summed (equal bags: a gather and a sum that compile fuses)."""
    return F.embedding(ids, weight).sum(-2)


def dot(weight: torch.Tensor, ids_a: torch.Tensor, ids_b: torch.Tensor) -> torch.Tensor:
    """weight: (N, K); ids_a, ids_b: (M,) int. Returns (M,) = Σ_k weight[a] ⊙ weight[b]."""
    return (F.embedding(ids_a, weight) * F.embedding(ids_b, weight)).sum(-1)


def triton_gather(
    weight: torch.Tensor, ids: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``padded_triton.padded_gather`` (imported on first use: only CUDA benches run it)."""
    from padded_triton import padded_gather

    return padded_gather(weight, ids, out=out)
