"""Merge α into the table and prune element-wise to a budget (DNIS's "layer merging").

Ê = E ⊙ α[block(·)]; entries of Ê with the smallest magnitudes are zeroed so that
exactly ``keep`` entries remain. The kept positions differ per feature (not a prefix):
feature i's dimension is the count of its kept entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def merge_alpha(
    weight: torch.Tensor, alpha: torch.Tensor, boundaries: torch.Tensor
) -> torch.Tensor:
    """Ê (N, K) = weight (N, K) ⊙ alpha (L, K)[block(row)], blocks from boundaries (L+1,)."""
    counts = (boundaries[1:] - boundaries[:-1]).to(weight.device)
    return weight * torch.repeat_interleave(alpha.to(weight.dtype), counts, dim=0)


def keep_count(
    numel: int,
    *,
    keep: int | None = None,
    ratio: float | None = None,
    nbytes: int | None = None,
    bytes_per_entry: float | None = None,
) -> int:
    """Number of entries to keep from exactly one budget.

    keep: an entry count. ratio: a fraction of ``numel`` (the uniform table's size).
    nbytes: a byte budget, with ``bytes_per_entry`` the storage cost of one kept value.
    """
    if sum(x is not None for x in (keep, ratio, nbytes)) != 1:
        raise ValueError("give exactly one budget: keep, ratio or nbytes")
    if keep is not None:
        k = int(keep)
    elif ratio is not None:
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratio must be in [0, 1], got {ratio}")
        k = round(ratio * numel)
    else:
        if not bytes_per_entry or bytes_per_entry <= 0:
            raise ValueError("a byte budget needs bytes_per_entry > 0")
        k = int(nbytes // bytes_per_entry)
    if not 0 <= k <= numel:
        raise ValueError(f"budget keeps {k} entries; the table has {numel}")
    return k


def topk_mask(values: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask of exactly ``keep`` entries with the largest |value|.

    Ties are broken deterministically: at equal magnitude the lower flat index wins.
    """
    flat = values.detach().abs().reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        # A stable descending sort keeps equal magnitudes in index order.
        order = torch.sort(flat, descending=True, stable=True).indices
        mask[order[:keep]] = True
    return mask.reshape(values.shape)


@dataclass
class PruneReport:
    """What pruning kept: nnz, the threshold τ, and per-feature dimensions (N,) int64."""

    nnz: int
    numel: int
    tau: float
    dims: torch.Tensor

    @property
    def ratio(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0

    def dim_histogram(self) -> dict[int, int]:
        """Feature dimension → number of features with it."""
        values, counts = torch.unique(self.dims, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}

    def block_mean_dims(self, boundaries: torch.Tensor) -> list[float]:
        """Mean kept dimension per frequency block."""
        b = boundaries.tolist()
        return [float(self.dims[b[i] : b[i + 1]].double().mean()) for i in range(len(b) - 1)]


def prune(
    merged: torch.Tensor,
    *,
    keep: int | None = None,
    ratio: float | None = None,
    tau: float | None = None,
) -> tuple[torch.Tensor, PruneReport]:
    """Zero the smallest entries of ``merged`` (N, K).

    Give exactly one of keep (entries), ratio (of N·K), or tau (keep |x| ≥ tau).
    Entries that are exactly 0 are never counted as kept.
    Returns (pruned (N, K) same dtype, report).
    """
    if tau is not None:
        if keep is not None or ratio is not None:
            raise ValueError("give either tau or a budget, not both")
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        mask = merged.abs() >= tau
    else:
        k = keep_count(merged.numel(), keep=keep, ratio=ratio)
        mask = topk_mask(merged, k)
    mask &= merged != 0
    pruned = torch.where(mask, merged, torch.zeros((), dtype=merged.dtype, device=merged.device))
    nnz = int(mask.sum())
    kept = merged.abs()[mask]
    threshold = float(kept.min()) if nnz else float("inf")
    report = PruneReport(nnz=nnz, numel=merged.numel(), tau=threshold, dims=mask.sum(1))
    return pruned, report
