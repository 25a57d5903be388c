"""nn.Modules whose forward is one mixemb op."""

from mixemb.nn.block_table import BlockTableEmbedding
from mixemb.nn.fused_optimizer import FusedOptimizer
from mixemb.nn.masked import MaskedEmbedding
from mixemb.nn.ragged import RaggedEmbedding
from mixemb.nn.ragged_bag import RaggedEmbeddingBag
from mixemb.nn.searchable import (
    SearchableEmbedding,
    SearchableEmbeddingBag,
    searchable,
    searchable_modules,
)
from mixemb.nn.soft_select import SoftSelectEmbedding, make_boundaries

__all__ = [
    "BlockTableEmbedding",
    "FusedOptimizer",
    "MaskedEmbedding",
    "RaggedEmbedding",
    "RaggedEmbeddingBag",
    "SearchableEmbedding",
    "SearchableEmbeddingBag",
    "SoftSelectEmbedding",
    "make_boundaries",
    "searchable",
    "searchable_modules",
]
