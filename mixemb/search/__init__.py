"""DNIS search: soft selection α trained on validation batches."""

from mixemb.search.dnis import SearchConfig, SearchResult, alpha_stats, build_search_model, search

__all__ = ["SearchConfig", "SearchResult", "alpha_stats", "build_search_model", "search"]
