"""The cache keys: the host's tiers (top-level ``cache``) and a route's ``cache`` with its key."""

from __future__ import annotations

from typing import Any

from speedproxy.config.kinds import as_list, boolean, duration, integer, names, read_names, size, string, text
from speedproxy.config.located import Val
from speedproxy.config.model import CacheConfig, CacheKeyConfig, RouteCacheConfig
from speedproxy.config.problems import Problems
from speedproxy.config.schema import Kind, Section, section
from speedproxy.config.units import describe_value

__all__ = ["CACHE", "CACHE_KEY", "ROUTE_CACHE"]


def _key_query(problems: Problems, val: Val, path: str) -> Any:
    if isinstance(val.value, list):
        return read_names(problems, val, path, "query parameter names")
    value = text(val)
    if value not in ("all", "none"):
        raise ValueError(f'expected "all", "none" or a list of parameter names, got {describe_value(value)}')
    return value


#: ``all``, ``none`` or the query parameter names kept in the key.
key_query = Kind(_key_query, write=lambda value: as_list(value) if isinstance(value, tuple) else value)

CACHE_KEY = Section(
    CacheKeyConfig,
    {
        "query": key_query,
        "ignore_query": names("query parameter names"),
        "headers": names("header names"),
    },
)

ROUTE_CACHE = Section(
    RouteCacheConfig,
    {
        "enabled": boolean,
        "default_ttl": duration(positive=False),
        "key": section(CACHE_KEY),
        "stale_while_revalidate": duration(positive=False),
        "stale_if_error": duration(positive=False),
        "min_uses": integer(1),
    },
)

CACHE = Section(
    CacheConfig,
    {
        "memory_size": size(0),
        "disk_path": string(),
        "disk_size": size(1024 * 1024),
        "max_object_size": size(1),
        "cascade_purge": boolean,
    },
)
