"""DNIS search: soft selection α trained on validation batches.

:func:`dnis` / :class:`DnisStep` search any model made :func:`mixemb.nn.searchable`
(``any_model``); :func:`search` runs it on mixemb's own models and datasets
(``on_dataset``).
"""

from mixemb.search.any_model import DnisResult, DnisStep, dnis
from mixemb.search.on_dataset import (
    SearchConfig,
    SearchResult,
    alpha_stats,
    build_search_model,
    search,
)

__all__ = [
    "DnisResult",
    "DnisStep",
    "SearchConfig",
    "SearchResult",
    "alpha_stats",
    "build_search_model",
    "dnis",
    "search",
]
