"""Statistics: the shared-memory segment, its readers and exporters.

The data path counts cache lookups with ``core.stats.cache_result(route,
result)``, ``result`` one of the constants below.
"""

from speedproxy.stats.segment import (
    CACHE_BYPASS,
    CACHE_HIT,
    CACHE_MISS,
    CACHE_RESULTS,
    CACHE_REVALIDATED,
    CACHE_STALE,
)

__all__ = ["CACHE_BYPASS", "CACHE_HIT", "CACHE_MISS", "CACHE_RESULTS", "CACHE_REVALIDATED", "CACHE_STALE"]
