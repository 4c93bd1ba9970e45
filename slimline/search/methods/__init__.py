"""Search methods: each proposes a per-layer plan for a model, data and byte budget."""

from slimline.search.methods.base import SearchContext, SearchMethod, get_method, method_names

__all__ = ["SearchContext", "SearchMethod", "get_method", "method_names"]
