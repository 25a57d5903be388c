"""Prune a searched table to a budget and make it servable.

``budget``: a budget (fraction of params or of the uniform-K fp32 bytes) → entries to
keep, per storage format; ``pruners``: merge α into the table and prune it (element-wise,
aligned, floor, rotated), one dispatch by name; ``finetune``: fine-tune with the mask
fixed and swap in a ragged table; ``files``: one pruned file; ``run``: ``mixemb prune``.
For any user model: ``to_ragged`` prunes every searchable table to one budget and swaps
in the ragged serving twins; ``model_file``: ``save`` / ``load`` of such a model.
"""

from mixemb.prune.budget import (
    REFERENCE_VALUE_BYTES,
    STORAGES,
    UNITS,
    InfeasibleBudget,
    block_boundaries_bytes,
    block_tables_bytes,
    budget_keep,
    keep_count,
    metadata_bytes,
    ragged_metadata_bytes,
    uniform_dim,
)
from mixemb.prune.files import PRUNED_KIND, load_pruned, save_pruned
from mixemb.prune.finetune import finetune_pruned, to_ragged_model
from mixemb.prune.model_file import MODEL_KIND, load, ragged_modules, save
from mixemb.prune.pruners import (
    PRUNERS,
    PruneReport,
    aligned_prune,
    floor_prune,
    merge_alpha,
    merge_and_prune,
    merged_table,
    prune,
    prune_table,
    rotate_table,
    topk_mask,
)
from mixemb.prune.to_ragged import RaggedReport, TableReport, to_ragged

__all__ = [
    "MODEL_KIND",
    "PRUNED_KIND",
    "PRUNERS",
    "REFERENCE_VALUE_BYTES",
    "STORAGES",
    "UNITS",
    "InfeasibleBudget",
    "PruneReport",
    "RaggedReport",
    "TableReport",
    "aligned_prune",
    "block_boundaries_bytes",
    "block_tables_bytes",
    "budget_keep",
    "finetune_pruned",
    "floor_prune",
    "keep_count",
    "load",
    "load_pruned",
    "merge_alpha",
    "merge_and_prune",
    "merged_table",
    "metadata_bytes",
    "prune",
    "prune_table",
    "ragged_metadata_bytes",
    "ragged_modules",
    "rotate_table",
    "save",
    "save_pruned",
    "to_ragged",
    "to_ragged_model",
    "topk_mask",
    "uniform_dim",
]
