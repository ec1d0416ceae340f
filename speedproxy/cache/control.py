"""Operator actions on one worker's cache: purge, clear, list, warm up.

The master's admin API sends these to every worker (AMP) and combines the
answers; each function here acts on the worker's :class:`ProxyCore`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed

from speedproxy.cache.keys import cache_key
from speedproxy.proxy.paths import PathError, normalise_path

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.core import ProxyCore


class CacheActionError(ValueError):
    """An operator's request names something that cannot be acted on."""


def _split_url(url: str):
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CacheActionError(f"expected an absolute http(s) URL, got {url!r}")
    try:
        path = normalise_path((parts.path or "/").encode("latin-1"))
    except (PathError, UnicodeEncodeError) as error:
        raise CacheActionError(f"{url!r}: {error}") from None
    return parts.scheme.encode(), parts.netloc.encode("latin-1"), path, parts.query.encode("latin-1")


def purge_url(core: "ProxyCore", url: str) -> int:
    """Drop what every cached route stores for ``url`` (all variants); the count."""
    tiers = core.cache
    if tiers is None:
        return 0
    scheme, host, path, query = _split_url(url)
    count = 0
    keys = set()
    for route in core.routes:
        settings = route.config.cache
        if not settings.enabled:
            continue
        keys.add(
            cache_key(
                host,
                path,
                query,
                scheme=scheme,
                query_mode=settings.key.query,
                ignore_query=settings.key.ignore_query,
            )
        )
    for key in keys:
        count += tiers.purge(key)
        count += tiers.purge_prefix(key + b"\n")  # keys extended with request headers
    return count


def purge_prefix(core: "ProxyCore", prefix: str) -> int:
    """Drop every object whose key (``scheme://host/path?query``) starts with ``prefix``."""
    tiers = core.cache
    if tiers is None:
        return 0
    if not prefix:
        raise CacheActionError("an empty prefix would purge everything: use /cache/clear")
    return tiers.purge_prefix(prefix.encode("latin-1"))


def clear(core: "ProxyCore", tier: str) -> int:
    """Drop everything from ``memory``, ``disk`` or ``all``."""
    if tier not in ("memory", "disk", "all"):
        raise CacheActionError(f"unknown tier {tier!r} (memory, disk or all)")
    tiers = core.cache
    return 0 if tiers is None else tiers.clear(tier)


def info(core: "ProxyCore") -> Dict[str, Any]:
    """Entries, bytes and counters of this worker's tiers (disk: the host's)."""
    tiers = core.cache
    if tiers is None:
        return {"enabled": False}
    result = tiers.info()
    result["enabled"] = True
    from speedproxy.hls.filter import hls_info

    hls = hls_info(core)
    if hls is not None:
        result["hls"] = hls  # per HLS route: prefetch counters, viewers, streams known
    return result


def keys(core: "ProxyCore", prefix: str = "", limit: int = 100) -> List[str]:
    tiers = core.cache
    if tiers is None:
        return []
    return [key.decode("latin-1") for key in tiers.keys(prefix.encode("latin-1"), limit)]


def search(core: "ProxyCore", text: str, limit: int = 100) -> List[str]:
    tiers = core.cache
    if tiers is None:
        return []
    return [key.decode("latin-1") for key in tiers.search(text.encode("latin-1"), limit)]


def warm(core: "ProxyCore", url: str) -> "Deferred[Optional[int]]":
    """Fetch ``url`` through its route (filling the cache); fires with the status.

    ``None`` when no route matches.  Implemented with the internal fetcher
    (:mod:`speedproxy.cache.fetch`).
    """
    from speedproxy.cache.fetch import fetch

    scheme, host, path, query = _split_url(url)
    target = path + (b"?" + query if query else b"")
    if core.router.match(host, path) is None:
        return succeed(None)
    return fetch(core, host, target, headers=[(b"Cache-Control", b"no-cache")], scheme=scheme)
