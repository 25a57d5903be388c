"""mixemb — Differentiable Neural Input Search (DNIS) for recommender embeddings.

Layers, each importing only those before it (see docs/architecture.md): data
(``mixemb.data``) → model with a pluggable embedding layer (``mixemb.models``) → training
(``mixemb.train``: one epoch loop) → search (``mixemb.search``: α of a
``SoftSelectEmbedding``) → prune (``mixemb.prune``) → methods (``mixemb.methods``) →
saved models (``mixemb.artifacts``) → ``mixemb.cli``. Served: ``RaggedTable`` in a
``RaggedEmbedding``. Kernels: ``mixemb.kernels`` (Triton).
"""

from mixemb.nn import RaggedEmbedding, SoftSelectEmbedding
from mixemb.ragged import RaggedTable

__version__ = "0.1.0"
__all__ = ["RaggedEmbedding", "RaggedTable", "SoftSelectEmbedding", "__version__"]
