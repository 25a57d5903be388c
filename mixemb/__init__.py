"""mixemb — Differentiable Neural Input Search (DNIS) for recommender embeddings.

Layers (see docs/architecture.md): data (``mixemb.data``) → encoder → model with a
pluggable embedding layer (``mixemb.models``) → training (``mixemb.train``) →
search (``SoftSelectEmbedding``) → prune (``mixemb.prune``) → ragged table
(``RaggedTable``) → serve (``RaggedEmbedding``). Kernels: ``mixemb.kernels`` (Triton).
"""

from mixemb.nn import RaggedEmbedding, SoftSelectEmbedding
from mixemb.ragged import RaggedTable

__version__ = "0.1.0"
__all__ = ["RaggedEmbedding", "RaggedTable", "SoftSelectEmbedding", "__version__"]
