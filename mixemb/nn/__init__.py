"""nn.Modules whose forward is one mixemb op."""

from mixemb.nn.fused_optimizer import FusedOptimizer
from mixemb.nn.masked import MaskedEmbedding
from mixemb.nn.ragged import RaggedEmbedding
from mixemb.nn.soft_select import SoftSelectEmbedding, make_boundaries

__all__ = [
    "FusedOptimizer",
    "MaskedEmbedding",
    "RaggedEmbedding",
    "SoftSelectEmbedding",
    "make_boundaries",
]
