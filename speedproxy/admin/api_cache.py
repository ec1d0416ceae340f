"""The TMDB proxy's cache calls: ``/cache/info``, ``/cache/keys``, ``/cache/search``, ``/cache/clear``.

Each asks every worker (through the control's cache fan-out, see
:mod:`speedproxy.admin.cache_worker`) and combines the answers
(:mod:`speedproxy.admin.cache_figures`).  All need the API key.
``/cache/clear`` needs ``confirm=yes`` for everything, and is cascaded to
upstream speedproxies with ``cache.cascade_purge`` (:mod:`speedproxy.admin.cascade`).
"""

from __future__ import annotations

from typing import Any, Dict, List

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from speedproxy.admin.api_cache_purge import check_url
from speedproxy.admin.cache_figures import any_enabled, combine_info, counts_or_fail, union_keys, worker_errors
from speedproxy.admin.cache_worker import fanout_of
from speedproxy.admin.cascade import Cascade, incoming_path
from speedproxy.admin.context import AdminContext, APIResource, params
from speedproxy.admin.json_resource import bad_request, query, query_int

#: Most keys one listing returns.
MAX_KEYS = 10000
TIERS = ("memory", "disk", "all")


def _key_text(value: str, name: str) -> str:
    """Text compared with stored keys (which are bytes: Latin-1 at most)."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise bad_request(f"{name} must be Latin-1 text (keys are stored as sent: percent-encode)", name) from None
    return value


class CacheInfoResource(APIResource):
    """``GET /cache/info``: entries, bytes and hit ratio per tier, and totals."""

    def json_GET(self, request: Request) -> Deferred:
        return fanout_of(self.api.control).each("info").addCallback(combine_info)


def _listing(rows: List[Dict[str, Any]], limit: int, offset: int) -> Dict[str, Any]:
    keys = union_keys(rows, limit, offset)
    body: Dict[str, Any] = {"enabled": False, "keys": keys, "total": len(keys), "limit": limit, "offset": offset}
    errors = worker_errors(rows)
    if errors:
        body["errors"] = errors
    return body


class CacheKeysResource(APIResource):
    """``GET /cache/keys[?prefix=&limit=&offset=]``: stored keys, every worker's, sorted."""

    def json_GET(self, request: Request) -> Deferred:
        limit = query_int(request, "limit", 100, 0, MAX_KEYS)
        offset = query_int(request, "offset", 0, 0, MAX_KEYS)
        prefix = _key_text(query(request, "prefix") or "", "prefix")
        fanout = fanout_of(self.api.control)

        def answer(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
            body = _listing(rows, limit, offset)
            body["prefix"] = prefix
            return _with_enabled(fanout, body)

        return fanout.each("keys", prefix=prefix, limit=limit + offset).addCallback(answer)


class CacheSearchResource(APIResource):
    """``GET /cache/search?q=`` (or ``pattern=``)``[&limit=]``: keys containing the text."""

    def json_GET(self, request: Request) -> Deferred:
        text = query(request, "q") or query(request, "pattern") or ""
        if not text:
            raise bad_request("give the text to look for as q=", "q")
        _key_text(text, "q")
        limit = query_int(request, "limit", 100, 0, MAX_KEYS)
        fanout = fanout_of(self.api.control)

        def answer(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
            body = _listing(rows, limit, 0)
            del body["offset"]
            body["query"] = text
            return _with_enabled(fanout, body)

        return fanout.each("search", text=text, limit=limit).addCallback(answer)


def _with_enabled(fanout: Any, body: Dict[str, Any]) -> Any:
    """Say whether any worker has a cache (an empty listing does not tell)."""
    if body["keys"]:
        body["enabled"] = True
        return body

    def enabled(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
        body["enabled"] = any_enabled(rows)
        return body

    return fanout.each("info").addCallback(enabled)


class CacheClearResource(APIResource):
    """``POST``/``DELETE /cache/clear?type=memory|disk|all&confirm=yes``.

    ``confirm=yes`` is needed for everything.  ``key=URL`` purges one URL
    and ``pattern=PREFIX[*]`` every key starting with an absolute URL
    prefix instead of clearing a tier.  Parameters may also come as a JSON
    object body.
    """

    def __init__(self, api: AdminContext, cascade: Cascade) -> None:
        super().__init__(api)
        self.cascade = cascade

    def _clear(self, request: Request) -> Any:
        values = params(request)
        if str(values.get("confirm", "")).lower() != "yes":
            raise bad_request("clearing the cache needs confirm=yes", "confirm")
        tier = values.get("type", values.get("tier", "all")) or "all"
        if tier not in TIERS:
            raise bad_request(f"type must be memory, disk or all, got {tier!r}", "type")
        key, pattern = values.get("key"), values.get("pattern")
        if key and pattern:
            raise bad_request("give key or pattern, not both", "pattern")
        path = incoming_path(request)
        if self.cascade.passed_here(path):
            return self.cascade.skipped(path)
        config = self.api.config
        fanout = fanout_of(self.api.control)
        if key or pattern:
            name = "key" if key else "pattern"
            text = check_url(key if key else str(pattern).rstrip("*"), name)
            arguments = {"url": text} if key else {"prefix": text}
            request.audit_note = f"{name}={text}"  # type: ignore[attr-defined]

            def purge() -> Deferred:
                def done(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
                    body = counts_or_fail(rows, "cleared", "clear")
                    body["scope"] = text
                    return body

                return fanout.each("purge", **arguments).addCallback(done)

            return self.cascade.around(config, path, "purge", arguments, purge)

        def clear() -> Deferred:
            def done(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
                body = counts_or_fail(rows, "cleared", "clear")
                body["type"] = tier
                body["scope"] = "all"
                return body

            return fanout.each("clear", tier=tier).addCallback(done)

        return self.cascade.around(config, path, "clear", {"type": tier}, clear)

    json_POST = _clear
    json_DELETE = _clear
