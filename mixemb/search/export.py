"""From a searched model to a pruned, ragged, servable one — and to one file.

``merge_and_prune`` merges α into the table (Ê = E ⊙ α[block]) and keeps exactly the
budgeted number of largest-magnitude entries; ``to_ragged_model`` swaps the model's
embedding layer for a :class:`RaggedEmbedding` holding only what was kept;
``save_pruned`` / ``load_pruned`` write and read a single ``weights_only``-safe file
(model config + encoder + dense weights + ragged table).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from mixemb.models import build_model
from mixemb.nn import MaskedEmbedding, RaggedEmbedding, SoftSelectEmbedding
from mixemb.prune import PruneReport, merge_alpha, prune
from mixemb.ragged import RaggedTable
from mixemb.train.checkpoint import CheckpointError, atomic_save, load_checkpoint

PRUNED_KIND = "mixemb.pruned"


def ragged_metadata_bytes(num_rows: int, dim: int, group_size: int = 16) -> int:
    """Bytes of a RaggedTable's metadata (masks + group offsets) for N rows of max dim K."""
    return num_rows * max(math.ceil(dim / 64), 1) * 8 + (math.ceil(num_rows / group_size) + 1) * 8


def merged_table(embedding: nn.Module) -> torch.Tensor:
    """Ê (N, K): E ⊙ α[block] for a SoftSelectEmbedding, E ⊙ mask for a MaskedEmbedding,
    the table itself for an nn.Embedding."""
    if isinstance(embedding, SoftSelectEmbedding):
        return merge_alpha(
            embedding.weight.detach(), embedding.alpha.detach(), embedding.boundaries
        )
    if isinstance(embedding, MaskedEmbedding):
        return (embedding.weight.detach() * embedding.mask).clone()
    if isinstance(embedding, nn.Embedding):
        return embedding.weight.detach().clone()
    raise TypeError(f"cannot prune a {type(embedding).__name__}")


def merge_and_prune(
    embedding: nn.Module,
    *,
    keep: int | None = None,
    ratio: float | None = None,
    nbytes: int | None = None,
    tau: float | None = None,
    value_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, PruneReport]:
    """Merged and pruned table (N, K) plus the report.

    Exactly one budget: keep (entries), ratio (of N·K, the uniform-K table), nbytes (total
    stored bytes of the ragged table, metadata included, values in ``value_dtype``), or tau.
    """
    merged = merged_table(embedding)
    if nbytes is not None:
        if keep is not None or ratio is not None or tau is not None:
            raise ValueError("give exactly one budget: keep, ratio, nbytes or tau")
        n, k = merged.shape
        room = nbytes - ragged_metadata_bytes(n, k)
        if room < 0:
            raise ValueError(
                f"{nbytes} bytes do not even hold the metadata ({ragged_metadata_bytes(n, k)} B)"
            )
        size = torch.empty((), dtype=value_dtype).element_size()
        keep = min(room // size, merged.numel())
    if tau is not None:
        return prune(merged, tau=tau)
    return prune(merged, keep=keep, ratio=ratio)


def aligned_prune(merged: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise magnitude pruning's per-feature dimensions, at aligned positions.

    d_i = the number of entries of row i among the ``keep`` largest |Ê| (exactly what
    :func:`mixemb.prune.prune` keeps per row); row i then keeps the d_i columns ranked
    highest by one global column order (Σ_i |Ê[i, k]|, ties to the lower column), so the
    kept dimensions of any two features are nested and a dot product between them runs
    over min(d_u, d_v) shared dimensions instead of a chance overlap.
    Returns (pruned (N, K) with Ê's values at the kept positions, mask (N, K) bool).
    """
    _, report = prune(merged, keep=keep)
    score = merged.abs().sum(0)
    order = torch.sort(score, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    mask = rank.unsqueeze(0) < report.dims.unsqueeze(1)
    mask &= merged != 0
    pruned = torch.where(mask, merged, torch.zeros((), dtype=merged.dtype, device=merged.device))
    return pruned, mask


def floor_prune(merged: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise magnitude pruning to ``keep`` entries in which no feature is left
    without an embedding: every row with a non-zero entry first keeps its largest |Ê|
    entry, the rest of the budget goes to the largest remaining entries of the table.

    merged: (N, K) float. Returns (pruned (N, K) with Ê's values at the kept positions,
    mask (N, K) bool). Raises ValueError when ``keep`` is below one entry per such row.
    """
    mag = merged.abs()
    forced = torch.zeros_like(merged, dtype=torch.bool)
    forced.scatter_(1, mag.argmax(1, keepdim=True), True)
    forced &= merged != 0
    rest = keep - int(forced.sum())
    if rest < 0:
        raise ValueError(
            f"keep={keep:,} is below one entry for each of the {int(forced.sum()):,} non-empty rows"
        )
    candidates = mag.masked_fill(forced, -1.0).flatten()
    rest = min(rest, int((candidates > 0).sum()))
    mask = forced.flatten().clone()
    mask[candidates.topk(rest).indices] = True
    mask = mask.view_as(merged)
    pruned = torch.where(mask, merged, torch.zeros((), dtype=merged.dtype, device=merged.device))
    return pruned, mask


def rotate_table(merged: torch.Tensor) -> torch.Tensor:
    """Ê·V with V (K, K) the right singular vectors of Ê, largest singular value first.

    V is orthogonal, so every dot product <ê_u, ê_v> is unchanged: a model whose
    embeddings only meet in dot products (MF, FM) scores exactly the same on the rotated
    table, while the energy of Ê moves into the leading columns, where magnitude pruning
    then keeps it.
    """
    v = torch.linalg.svd(merged.double(), full_matrices=False).Vh.T
    return (merged.double() @ v).to(merged.dtype)


def to_ragged_model(
    model: nn.Module, pruned: torch.Tensor, *, value_dtype: torch.dtype | None = None
) -> nn.Module:
    """The same model on a RaggedEmbedding of ``pruned``; every other weight is copied."""
    cfg = dict(model.config)
    table = RaggedTable.from_dense(pruned.cpu(), dtype=value_dtype)
    serving = build_model(cfg.pop("name"), embedding=RaggedEmbedding(table), **cfg)
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    missing, unexpected = serving.load_state_dict(rest, strict=False)
    if unexpected or any(not k.startswith("embedding.") for k in missing):
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return serving.eval()


def save_pruned(model: nn.Module, path: str | Path, **extra) -> Path:
    """Write a RaggedEmbedding-backed model to one file (atomic, weights_only-safe).

    extra: JSON/tensor-only entries (encoder state, dataset spec, prune report numbers).
    """
    emb = model.embedding
    if not isinstance(emb, RaggedEmbedding):
        raise TypeError(f"save_pruned needs a RaggedEmbedding model, got {type(emb).__name__}")
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith("embedding.")}
    return atomic_save(
        {
            "kind": PRUNED_KIND,
            "model_config": dict(model.config),
            "dense_state": rest,
            "table": emb.table.state_dict(),
            **extra,
        },
        path,
    )


def load_pruned(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_pruned`; returns (model in eval mode, file dict)."""
    obj = load_checkpoint(path, kind=PRUNED_KIND)
    try:
        table = RaggedTable.from_state_dict(obj["table"])
        cfg = dict(obj["model_config"])
        model = build_model(cfg.pop("name"), embedding=RaggedEmbedding(table), **cfg)
        missing, unexpected = model.load_state_dict(obj["dense_state"], strict=False)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged pruned model ({exc})") from exc
    if unexpected or any(not k.startswith("embedding.") for k in missing):
        raise CheckpointError(f"{path}: weights do not fit the saved model config")
    return model.eval(), obj
