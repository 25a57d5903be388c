"""mixemb — Differentiable Neural Input Search (DNIS) for recommender embeddings.

In your own model (README "Use it in your own model"): :func:`searchable` swaps its
``nn.Embedding`` / ``nn.EmbeddingBag`` modules for soft-select twins, :func:`dnis` searches
α, :func:`to_ragged` prunes every table to one byte budget and serves it ragged,
:func:`save` / :func:`load` keep the pruned model in one file.

Layers, each importing only those before it (see docs/architecture.md): ops, kernels and
modules (``mixemb.ops``, ``mixemb.kernels``, ``mixemb.nn``) → data (``mixemb.data``) →
models (``mixemb.models``) → training (``mixemb.train``: one epoch loop) → search
(``mixemb.search``) → prune (``mixemb.prune``) → methods (``mixemb.methods``) → saved
models (``mixemb.artifacts``) → ``mixemb.cli``.
"""

from mixemb.block_table import BlockTable
from mixemb.nn import (
    BlockTableEmbedding,
    RaggedEmbedding,
    RaggedEmbeddingBag,
    SearchableEmbedding,
    SearchableEmbeddingBag,
    SoftSelectEmbedding,
    searchable,
)
from mixemb.prune import load, save, to_ragged
from mixemb.ragged import RaggedTable
from mixemb.search import DnisResult, DnisStep, dnis

__version__ = "0.1.0"
__all__ = [
    "BlockTable",
    "BlockTableEmbedding",
    "DnisResult",
    "DnisStep",
    "RaggedEmbedding",
    "RaggedEmbeddingBag",
    "RaggedTable",
    "SearchableEmbedding",
    "SearchableEmbeddingBag",
    "SoftSelectEmbedding",
    "__version__",
    "dnis",
    "load",
    "save",
    "searchable",
    "to_ragged",
]
