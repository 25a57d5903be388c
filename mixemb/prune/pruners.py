"""Merge α into the table and prune it to a budget (DNIS's "layer merging").

Ê = E ⊙ α[block(·)] (:func:`merged_table`); a pruner then keeps exactly ``keep`` entries
of Ê and zeroes the rest. Each pruner is one function behind one dispatch by name
(:func:`prune_table`, names in :data:`PRUNERS`):

* ``"elem"``: the ``keep`` largest |Ê| over the whole table (:func:`prune`); the kept
  positions differ per feature (not a prefix): feature i's dimension is the count of
  its kept entries;
* ``"aligned"``: the same per-feature dimensions at positions shared by every feature
  (:func:`aligned_prune`);
* ``"floor"``: element-wise, but every non-empty feature first keeps its largest entry
  (:func:`floor_prune`);
* ``"rot"``: Ê rotated onto its right singular vectors, then element-wise
  (:func:`rotate_table`; exact only for models whose embeddings meet in dot products).

Outside that dispatch, because its result is stored as one dense table per block rather
than ragged: :func:`block_mask_prune` keeps one set of dimensions per frequency block (an
L×K mask for the whole table), chosen by the energy of Ê's columns in each block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mixemb.nn import MaskedEmbedding, SoftSelectEmbedding
from mixemb.prune.budget import InfeasibleBudget, check_storage_dtype, keep_count, metadata_bytes
from mixemb.quant import value_bytes

PRUNERS = ("elem", "aligned", "floor", "rot")


def merge_alpha(
    weight: torch.Tensor, alpha: torch.Tensor, boundaries: torch.Tensor
) -> torch.Tensor:
    """Ê (N, K) = weight (N, K) ⊙ alpha (L, K)[block(row)], blocks from boundaries (L+1,)."""
    counts = (boundaries[1:] - boundaries[:-1]).to(weight.device)
    return weight * torch.repeat_interleave(alpha.to(weight.dtype), counts, dim=0)


def merged_table(embedding: nn.Module) -> torch.Tensor:
    """Ê (N, K): E ⊙ α[block] for a SoftSelectEmbedding, E ⊙ mask for a MaskedEmbedding,
    the table itself for an nn.Embedding."""
    if isinstance(embedding, SoftSelectEmbedding):
        return merge_alpha(
            embedding.weight.detach(), embedding.alpha.detach(), embedding.boundaries
        )
    if isinstance(embedding, MaskedEmbedding):
        return embedding.masked_weight()
    if isinstance(embedding, nn.Embedding):
        return embedding.weight.detach().clone()
    raise TypeError(f"cannot prune a {type(embedding).__name__}")


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

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> PruneReport:
        """The report of a kept-entries mask (N, K) bool whose pruner has no threshold."""
        return cls(nnz=int(mask.sum()), numel=mask.numel(), tau=0.0, dims=mask.sum(1))

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


def _where(mask: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, merged, torch.zeros((), dtype=merged.dtype, device=merged.device))


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
    pruned = _where(mask, merged)
    nnz = int(mask.sum())
    kept = merged.abs()[mask]
    threshold = float(kept.min()) if nnz else float("inf")
    report = PruneReport(nnz=nnz, numel=merged.numel(), tau=threshold, dims=mask.sum(1))
    return pruned, report


def aligned_prune(merged: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise magnitude pruning's per-feature dimensions, at aligned positions.

    d_i = the number of entries of row i among the ``keep`` largest |Ê| (exactly what
    :func:`prune` keeps per row); row i then keeps the d_i columns ranked highest by one
    global column order (Σ_i |Ê[i, k]|, ties to the lower column), so the kept
    dimensions of any two features are nested and a dot product between them runs over
    min(d_u, d_v) shared dimensions instead of a chance overlap.
    merged: (N, K) float. Returns (pruned (N, K) with Ê's values at the kept positions,
    mask (N, K) bool).
    """
    _, report = prune(merged, keep=keep)
    score = merged.abs().sum(0)
    order = torch.sort(score, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    mask = rank.unsqueeze(0) < report.dims.unsqueeze(1)
    mask &= merged != 0
    return _where(mask, merged), mask


def floor_prune(merged: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise magnitude pruning to ``keep`` entries in which no feature is left
    without an embedding: every row with a non-zero entry first keeps its largest |Ê|
    entry, the rest of the budget goes to the largest remaining entries of the table.

    merged: (N, K) float. Returns (pruned (N, K) with Ê's values at the kept positions,
    mask (N, K) bool). Raises InfeasibleBudget when ``keep`` is below one entry per such
    row.
    """
    mag = merged.abs()
    forced = torch.zeros_like(merged, dtype=torch.bool)
    forced.scatter_(1, mag.argmax(1, keepdim=True), True)
    forced &= merged != 0
    rest = keep - int(forced.sum())
    if rest < 0:
        raise InfeasibleBudget(
            f"keep={keep:,} is below one entry for each of the {int(forced.sum()):,} non-empty rows"
        )
    candidates = mag.masked_fill(forced, -1.0).flatten()
    rest = min(rest, int((candidates > 0).sum()))
    mask = forced.flatten().clone()
    mask[candidates.topk(rest).indices] = True
    mask = mask.view_as(merged)
    return _where(mask, merged), mask


def rotate_table(merged: torch.Tensor) -> torch.Tensor:
    """Ê·V (N, K) with V (K, K) the right singular vectors of Ê (N, K), largest singular
    value first.

    V is orthogonal, so every dot product <ê_u, ê_v> is unchanged: a model whose
    embeddings only meet in dot products (MF, FM) scores exactly the same on the rotated
    table, while the energy of Ê moves into the leading columns, where magnitude pruning
    then keeps it.
    """
    return (merged.double() @ singular_vectors(merged)).to(merged.dtype)


def singular_vectors(merged: torch.Tensor) -> torch.Tensor:
    """V (K, K) float64: the right singular vectors of ``merged`` (N, K) as columns,
    largest singular value first (the rotation of :func:`rotate_table`)."""
    return torch.linalg.svd(merged.double(), full_matrices=False).Vh.T


def prune_table(
    merged: torch.Tensor, keep: int, pruner: str = "elem"
) -> tuple[torch.Tensor, PruneReport]:
    """``merged`` (N, K) pruned to ``keep`` entries by the pruner named ``pruner`` (one of
    :data:`PRUNERS`). Returns (pruned (N, K) same dtype, report)."""
    if pruner == "elem":
        return prune(merged, keep=keep)
    if pruner == "rot":
        return prune(rotate_table(merged), keep=keep)
    if pruner == "floor":
        table, mask = floor_prune(merged, keep)
    elif pruner == "aligned":
        table, mask = aligned_prune(merged, keep)
    else:
        raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    return table, PruneReport.from_mask(mask)


def block_column_scores(
    merged: torch.Tensor, boundaries: torch.Tensor, row_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """s (L, K) float64: the RMS over block l's rows of Ê[:, k] (merged (N, K), blocks
    from boundaries (L+1,)); for Ê = E ⊙ α, s_lk = α_lk · RMS of E[:, k] over the block.
    row_weights: (N,) float ≥ 0, e.g. each id's lookups in the training split: then each
    row's square is weighted, so s_lk² is the energy a lookup of the block meets per row
    stored (a column of hot rows outranks the same energy on rows seldom looked up)."""
    counts = (boundaries[1:] - boundaries[:-1]).to(merged.device)
    if bool((counts <= 0).any()):
        raise ValueError(f"every block needs a row, got block sizes {counts.tolist()}")
    block = torch.repeat_interleave(torch.arange(counts.numel(), device=merged.device), counts)
    squares = merged.double().square()
    if row_weights is not None:
        w = torch.as_tensor(row_weights, device=merged.device).double()
        if w.shape != (merged.shape[0],) or not bool(torch.isfinite(w).all() & (w >= 0).all()):
            raise ValueError(
                f"row_weights must be ({merged.shape[0]},) finite and >= 0, got shape "
                f"{tuple(w.shape)}"
            )
        squares = squares * w.unsqueeze(1)
    energy = torch.zeros(counts.numel(), merged.shape[1], dtype=torch.float64, device=merged.device)
    energy.index_add_(0, block, squares)
    return (energy / counts.unsqueeze(1).double()).sqrt()


def allocate_block_mask(scores: torch.Tensor, sizes: list[int], keep: int) -> torch.Tensor:
    """(L, K) bool: the dimensions each block keeps, at most ``keep`` entries in all.

    scores: (L, K) float, a column's energy per row in its block (see
    :func:`block_column_scores`); sizes: rows per block. Every block first keeps its
    best column (so no feature is left without a dimension); then columns go greedily by
    score² per stored byte — a column of block l adds sizes[l]·s_lk² of Ê's energy for
    sizes[l] values, so by s_lk² — skipping those that no longer fit, until no column
    fits what is left (ties: lower block, then lower column). Raises InfeasibleBudget
    when ``keep`` is below one dimension a row.
    """
    num_blocks, dim = scores.shape
    if len(sizes) != num_blocks:
        raise ValueError(f"need {num_blocks} block sizes, got {len(sizes)}")
    if sum(sizes) > keep:
        raise InfeasibleBudget(
            f"keep={keep:,} is below one dimension for each of {sum(sizes):,} rows"
        )
    mask = torch.zeros(num_blocks, dim, dtype=torch.bool)
    s = scores.detach().double().cpu()
    mask[torch.arange(num_blocks), s.argmax(1)] = True
    rest = keep - sum(sizes)
    order = torch.sort(s.masked_fill(mask, -1.0).flatten(), descending=True, stable=True).indices
    for flat in order.tolist():
        block, column = divmod(flat, dim)
        if not mask[block, column] and sizes[block] <= rest:
            mask[block, column] = True
            rest -= sizes[block]
    return mask


def expand_block_mask(block_mask: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """block_mask (L, K) bool, boundaries (L+1,) → (N, K) bool: each row its block's row."""
    counts = (boundaries[1:] - boundaries[:-1]).to(block_mask.device)
    return torch.repeat_interleave(block_mask, counts, dim=0)


def block_mask_prune(
    merged: torch.Tensor,
    boundaries: torch.Tensor,
    keep: int,
    row_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ê (N, K) pruned to one dimension set per frequency block, at most ``keep`` entries
    (:func:`allocate_block_mask` of :func:`block_column_scores`, rows weighted by
    ``row_weights`` (N,) when given). Returns (pruned (N, K) with Ê's values on the kept
    columns of each row's block, block mask (L, K) bool)."""
    sizes = (boundaries[1:] - boundaries[:-1]).tolist()
    scores = block_column_scores(merged, boundaries, row_weights)
    block_mask = allocate_block_mask(scores, sizes, keep)
    rows = expand_block_mask(block_mask.to(merged.device), boundaries)
    return _where(rows, merged), block_mask


def merge_and_prune(
    embedding: nn.Module,
    *,
    keep: int | None = None,
    ratio: float | None = None,
    nbytes: int | None = None,
    tau: float | None = None,
    value_dtype: str = "fp32",
) -> tuple[torch.Tensor, PruneReport]:
    """Merged and element-wise pruned table (N, K) of ``embedding``, plus the report.

    Exactly one budget: keep (entries), ratio (of N·K, the uniform-K table), nbytes (total
    stored bytes of the ragged table, metadata included, values in ``value_dtype``: one of
    :data:`mixemb.quant.VALUE_DTYPES`, int8 rows paying their scale and bias), or tau.
    """
    check_storage_dtype("ragged", value_dtype)
    merged = merged_table(embedding)
    if nbytes is not None:
        if keep is not None or ratio is not None or tau is not None:
            raise ValueError("give exactly one budget: keep, ratio, nbytes or tau")
        n, k = merged.shape
        keep = keep_count(
            merged.numel(),
            nbytes=nbytes,
            bytes_per_entry=value_bytes(value_dtype),
            metadata=metadata_bytes("ragged", n, k, value_dtype=value_dtype),
        )
    if tau is not None:
        return prune(merged, tau=tau)
    return prune(merged, keep=keep, ratio=ratio)
