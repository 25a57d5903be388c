"""``to_ragged``: merge α into every searchable table of a model, prune them all to one
byte budget, and swap in the ragged serving twins in place.

The budget is shared: one magnitude threshold over the merged entries of every table
(the largest |Ê| kept first, ties to the table listed first, then the lower index), so
a table whose α faded loses more than one whose α stayed high. The bytes counted are
what the :class:`~mixemb.ragged.RaggedTable` s store — masks, group offsets, an int8
table's per-row scale and bias, and the kept values in ``value_dtype`` — by
:mod:`mixemb.prune.budget`'s arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mixemb.nn.ragged import RaggedEmbedding
from mixemb.nn.ragged_bag import RaggedEmbeddingBag
from mixemb.nn.searchable import OPTIONAL_KINDS, SearchableEmbeddingBag, searchable_modules
from mixemb.prune.budget import (
    REFERENCE_VALUE_BYTES,
    InfeasibleBudget,
    check_storage_dtype,
    ragged_bytes,
)
from mixemb.prune.pruners import topk_mask
from mixemb.quant import value_bytes
from mixemb.ragged import RaggedTable


@dataclass
class TableReport:
    """One table after :func:`to_ragged`: its size, what it kept and what it stores."""

    name: str
    num_embeddings: int
    embedding_dim: int
    kept: int  # stored values
    stored_bytes: int  # the RaggedTable's nbytes(): values and metadata
    dense_bytes: int  # the fp32 (N, K) table's

    @property
    def mean_dims(self) -> float:
        """Mean kept dimensions per row."""
        return self.kept / self.num_embeddings if self.num_embeddings else 0.0


@dataclass
class RaggedReport:
    """What :func:`to_ragged` did: per-table rows (``tables``), the budget in bytes, the
    value dtype, and the threshold τ (the smallest |Ê| kept; inf when nothing was)."""

    tables: list[TableReport] = field(default_factory=list)
    budget_bytes: int = 0
    value_dtype: str = "fp32"
    threshold: float = math.inf

    @property
    def kept(self) -> int:
        return sum(t.kept for t in self.tables)

    @property
    def stored_bytes(self) -> int:
        return sum(t.stored_bytes for t in self.tables)

    @property
    def dense_bytes(self) -> int:
        return sum(t.dense_bytes for t in self.tables)

    @property
    def ratio(self) -> float:
        """Stored bytes over the dense fp32 tables' bytes."""
        return self.stored_bytes / self.dense_bytes if self.dense_bytes else 0.0

    def __str__(self) -> str:
        head = ("table", "rows", "dim", "kept", "mean dims", "stored B", "dense B", "ratio")
        rows = [
            (t.name, t.num_embeddings, t.embedding_dim, t.kept, t.mean_dims)
            + (t.stored_bytes, t.dense_bytes, t.stored_bytes / max(t.dense_bytes, 1))
            for t in self.tables
        ]
        rows.append(
            ("total", sum(t.num_embeddings for t in self.tables), "", self.kept, "")
            + (self.stored_bytes, self.dense_bytes, self.ratio)
        )
        cells = [head] + [tuple(_cell(v) for v in row) for row in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
        lines = [
            "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])
            for row in cells
        ]
        lines.append(
            f"values {self.value_dtype}, budget {self.budget_bytes:,} B, "
            f"threshold |value| >= {self.threshold:.4g}"
        )
        return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def to_ragged(
    model: nn.Module,
    *,
    ratio: float | None = None,
    nbytes: int | None = None,
    value_dtype: str | None = None,
) -> RaggedReport:
    """Prune every searchable twin of ``model`` (``mixemb.searchable``'s, or the
    SoftSelectEmbedding of mixemb's own models) to one shared budget and replace it, in
    place, by its serving twin: a ``SearchableEmbedding`` or ``SoftSelectEmbedding`` by a
    :class:`RaggedEmbedding` (``forward(ids, values=None)``, as the SoftSelectEmbedding's),
    a ``SearchableEmbeddingBag`` by a :class:`RaggedEmbeddingBag` of the same mode,
    padding_idx and include_last_offset.

    ratio: a fraction (> 0) of the dense fp32 bytes of all searchable tables together
        (Σ 4·N·K); nbytes: a byte count. Exactly one of them. The stored tables — values,
        masks, group offsets, an int8 table's scale and bias — fit in it.
    value_dtype: default None (= "fp32"); or "fp16", "bf16", "int8": how the kept values
        are stored (a lower precision buys more of them).

    Each twin's table is its ``merged_weight()`` (weight ⊙ α[block]); the entries kept
    are the largest |Ê| over all tables together. A bag twin's padding row, never read,
    is pruned first. Returns a :class:`RaggedReport` (``print`` it for a table). Raises
    ValueError for bad arguments, a model without searchable twins or one holding a
    ``RowsSoftSelect`` (α for rows a TorchRec lookup owns: no table here), InfeasibleBudget
    when the budget does not hold the metadata and one value.
    """
    value_dtype = "fp32" if value_dtype is None else value_dtype
    check_storage_dtype("ragged", value_dtype)
    twins = searchable_modules(model)
    if not twins:
        raise ValueError(
            f"{type(model).__name__} holds no searchable table: call searchable(model) first"
        )
    for name, twin in twins.items():
        if isinstance(twin, tuple(OPTIONAL_KINDS)):  # a RowsSoftSelect: α without a table
            raise ValueError(
                f"to_ragged: {name!r} is a {type(twin).__name__}: its table is owned by "
                "TorchRec's sharded lookup; prune the EmbeddingCollection's tables with "
                "to_ragged(mixemb.nn.torchrec_rows.bag_twin(pooling, tables)), tables the "
                "gathered (N, K) weights by config name"
            )
    names = list(twins)
    dense = sum(REFERENCE_VALUE_BYTES * t.num_embeddings * t.embedding_dim for t in twins.values())
    budget = _budget_bytes(ratio, nbytes, dense)
    metadata = sum(
        ragged_bytes(t.num_embeddings, t.embedding_dim, 0, value_dtype) for t in twins.values()
    )
    size = value_bytes(value_dtype)
    if budget - metadata < size:
        raise InfeasibleBudget(
            f"{budget:,} bytes do not hold the ragged metadata ({metadata:,} B) of "
            f"{len(twins)} table(s) and one {value_dtype} value"
        )
    merged = [_merged(twins[name]) for name in names]
    magnitudes = torch.cat([m.abs().reshape(-1).float().cpu() for m in merged])
    keep = min((budget - metadata) // size, int(magnitudes.count_nonzero()))
    kept = topk_mask(magnitudes, keep) & (magnitudes != 0)
    report = RaggedReport(
        budget_bytes=budget,
        value_dtype=value_dtype,
        threshold=float(magnitudes[kept].min()) if keep else math.inf,
    )
    served = {}
    for name, table, mask in zip(names, merged, kept.split([m.numel() for m in merged])):
        mask = mask.view(table.shape).to(table.device)
        pruned = torch.where(mask, table, torch.zeros((), dtype=table.dtype, device=table.device))
        twin = twins[name]
        served[id(twin)] = module = _serving(
            twin, RaggedTable.from_dense(pruned, dtype=value_dtype)
        )
        n, k = table.shape
        report.tables.append(
            TableReport(name, n, k, int(mask.sum()), module.nbytes(), REFERENCE_VALUE_BYTES * n * k)
        )
    # every name of a twin, a twin shared under several names included
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if id(module) in served:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, served[id(module)])
    return report


def _budget_bytes(ratio: float | None, nbytes: int | None, dense: int) -> int:
    """The byte budget of exactly one of ratio (of ``dense`` bytes) and nbytes."""
    if (ratio is None) == (nbytes is None):
        raise ValueError("give exactly one budget: ratio or nbytes")
    if ratio is not None:
        if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"ratio must be a finite number > 0, got {ratio!r}")
        return math.floor(ratio * dense)
    if type(nbytes) is not int or nbytes <= 0:
        raise ValueError(f"nbytes must be an int > 0, got {nbytes!r}")
    return nbytes


def _merged(twin: nn.Module) -> torch.Tensor:
    """(N, K) Ê of a twin; a bag's padding row (never read) zeroed."""
    merged = twin.merged_weight()
    if isinstance(twin, SearchableEmbeddingBag) and twin.padding_idx is not None:
        merged[twin.padding_idx] = 0
    return merged


def _serving(twin: nn.Module, table: RaggedTable) -> RaggedEmbedding:
    if isinstance(twin, SearchableEmbeddingBag):
        return RaggedEmbeddingBag(
            table,
            mode=twin.mode,
            padding_idx=twin.padding_idx,
            include_last_offset=twin.include_last_offset,
            out_dtype=twin.weight.dtype,
        )
    return RaggedEmbedding(table, out_dtype=twin.weight.dtype)
