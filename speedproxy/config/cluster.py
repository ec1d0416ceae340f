"""The ``cluster`` and ``accounting`` sections: the fleet's Redis and where traffic counts go."""

from __future__ import annotations

import re
from typing import Any, Mapping

from speedproxy.config.kinds import duration, header_name, integer, names, string, text
from speedproxy.config.located import Val
from speedproxy.config.model import AccountingConfig, ClusterConfig
from speedproxy.config.problems import Problems
from speedproxy.config.schema import Kind, Section
from speedproxy.config.units import describe_value

__all__ = ["ACCOUNTING", "CLUSTER", "check_accounting"]


def _redis_address(problems: Problems, val: Val, path: str) -> str:
    """``cluster.redis``: empty, ``redis://...`` or ``sentinel://...`` (:mod:`speedproxy.cluster.address`)."""
    value = text(val).strip()
    if value:
        from speedproxy.cluster.address import redis_address_of

        redis_address_of(value)  # a ${env:}/${file:} reference is resolved (and kept as written)
    return value


def _node_name(problems: Problems, val: Val, path: str) -> str:
    value = text(val).strip()
    if value and not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,100}", value):
        raise ValueError(f"expected letters, digits and _.:@- (at most 100), got {describe_value(value)}")
    return value


def _collector_url(problems: Problems, val: Val, path: str) -> str:
    value = text(val).strip()
    if value and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", value):
        raise ValueError(f'expected an http(s) URL such as "http://collector:8000/batches", got {describe_value(value)}')
    return value


CLUSTER = Section(
    ClusterConfig,
    {
        "redis": Kind(_redis_address),
        "node_name": Kind(_node_name),
        "heartbeat": duration(positive=True),
        "timeout": duration(positive=True),
        "key_prefix": string(),
    },
)

ACCOUNTING = Section(
    AccountingConfig,
    {
        "interval": duration(positive=True),
        "redis_stream": string(),
        "collector": Kind(_collector_url),
        "max_buffer": integer(1, 10_000_000),
        "routes": names("route"),
        "api_key_header": header_name,
    },
)


def check_accounting(
    problems: Problems, section: Mapping[str, Val], cluster: Any, accounting: Any, routing: Mapping[str, Any]
) -> None:
    """``accounting.redis_stream`` needs ``cluster.redis``; one destination at most; known routes."""
    val = section.get("accounting")
    if val is None or not isinstance(val.value, dict):
        return
    listed = val.value.get("routes")
    for index, name in enumerate(accounting.routes):
        if name not in routing:
            line = listed.value[index].line if listed is not None and isinstance(listed.value, list) else val.line
            problems.add(line, f"accounting.routes[{index}]", f"no route {name!r} (known: {', '.join(routing) or 'none'})")
    if accounting.redis_stream and not cluster.redis:
        problems.add(val.value["redis_stream"].line, "accounting.redis_stream", "needs cluster.redis (the Redis to write to)")
    if accounting.redis_stream and accounting.collector:
        problems.add(val.value["collector"].line, "accounting.collector", "give redis_stream or collector, not both")
