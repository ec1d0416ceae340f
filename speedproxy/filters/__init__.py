"""Filters: features that look at a route's requests and responses.

See :mod:`speedproxy.filters.interface` for the seam and README.rst
("Filters") for how to write one in another package.
"""

from speedproxy.filters.base import Filter
from speedproxy.filters.chain import FilterChain
from speedproxy.filters.interface import FilterContext, FilterOptionsError, IFilter, IFilterKind
from speedproxy.filters.messages import FilterRequest, FilterResponse, LocalResponse
from speedproxy.filters.registry import filter_kinds, find_filter_kind

__all__ = [
    "Filter",
    "FilterChain",
    "FilterContext",
    "FilterOptionsError",
    "FilterRequest",
    "FilterResponse",
    "IFilter",
    "IFilterKind",
    "LocalResponse",
    "filter_kinds",
    "find_filter_kind",
]
