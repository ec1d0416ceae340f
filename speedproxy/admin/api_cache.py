"""The TMDB proxy's cache calls: ``/cache/info``, ``/cache/keys``, ``/cache/search``, ``/cache/clear``.

speedproxy has no response cache yet.  These endpoints keep their paths
(and need the API key, as the other non-monitoring calls do) so existing
tooling keeps working, and answer with an honest view of an empty,
disabled cache (``"enabled": false``, nothing stored) rather than an error.
When the cache arrives, it plugs in behind the same answers.
"""

from __future__ import annotations

from typing import Any, Dict

from twisted.web.server import Request

from speedproxy.admin.context import APIResource, params
from speedproxy.admin.json_resource import bad_request, query, query_int

NO_CACHE = "speedproxy has no response cache yet; nothing is stored"


_CacheResource = APIResource


class CacheInfoResource(_CacheResource):
    """``GET /cache/info``: size and hit counters (all zero: there is no cache)."""

    def json_GET(self, request: Request) -> Dict[str, Any]:
        return {
            "enabled": False,
            "entries": 0,
            "size_bytes": 0,
            "max_size_bytes": 0,
            "hits": 0,
            "misses": 0,
            "hit_rate": 0.0,
            "detail": NO_CACHE,
        }


class CacheKeysResource(_CacheResource):
    """``GET /cache/keys[?limit=&offset=]``: stored keys (none)."""

    def json_GET(self, request: Request) -> Dict[str, Any]:
        limit = query_int(request, "limit", 100, 0, 100000)
        offset = query_int(request, "offset", 0, 0, 10**9)
        return {"enabled": False, "keys": [], "total": 0, "limit": limit, "offset": offset, "detail": NO_CACHE}


class CacheSearchResource(_CacheResource):
    """``GET /cache/search?q=`` (or ``pattern=``): keys matching (none)."""

    def json_GET(self, request: Request) -> Dict[str, Any]:
        pattern = query(request, "q") or query(request, "pattern") or ""
        return {"enabled": False, "query": pattern, "keys": [], "total": 0, "detail": NO_CACHE}


class CacheClearResource(_CacheResource):
    """``POST``/``DELETE /cache/clear``: clearing everything needs ``confirm=yes``.

    ``key=`` or ``pattern=`` clear a subset without confirmation.
    """

    def _clear(self, request: Request) -> Dict[str, Any]:
        values = params(request)
        subset = values.get("key") or values.get("pattern")
        if not subset and str(values.get("confirm", "")).lower() != "yes":
            raise bad_request("clearing the whole cache needs confirm=yes", "confirm")
        return {"enabled": False, "cleared": 0, "scope": subset or "all", "detail": NO_CACHE}

    json_POST = _clear
    json_DELETE = _clear
