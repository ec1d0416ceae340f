"""The ``routing`` section: each route's keys and the checks across a route and between routes."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from speedproxy.config import compression, edge, edge_limits
from speedproxy.config.caching import ROUTE_CACHE
from speedproxy.config.hls import ROUTE_HLS
from speedproxy.config.kinds import choice, networks, string, text, url_path
from speedproxy.config.located import Val
from speedproxy.config.model import BALANCER_NAMES, ProtocolBalancers, RouteCacheConfig, RouteConfig, RouteHlsConfig
from speedproxy.config.problems import Problems, Reported, join
from speedproxy.config.route_filters import filters
from speedproxy.config.schema import (
    Kind,
    Section,
    equals,
    is_empty,
    is_none,
    omit_if,
    optional_section,
    read_record,
    section,
    write_section,
)
from speedproxy.config.units import describe_value

__all__ = ["PROTOCOLS", "ROUTE", "read_routing", "write_routing"]


def _route_host(problems: Problems, val: Val, path: str) -> Optional[str]:
    if val.value is None:
        return None
    return text(val).lower() or None


#: ``off``: WebSocket upgrades are not forwarded (the request goes on as a
#: plain GET); event streams use the route's own balancer.
_PROTOCOL_BALANCER = choice(BALANCER_NAMES + ("off",), "load balancer")

PROTOCOLS = Section(
    ProtocolBalancers,
    # grpc off: not a gRPC route (speedproxy.config.grpc_routes)
    {"websocket": _PROTOCOL_BALANCER, "sse": _PROTOCOL_BALANCER, "grpc": omit_if(equals("off"), _PROTOCOL_BALANCER)},
)

ROUTE = Section(
    RouteConfig,
    {
        "path": url_path,
        "host": omit_if(is_none, Kind(_route_host)),
        "upstream": string(non_empty=True),
        "load_balancer": choice(BALANCER_NAMES, "load balancer"),
        "protocols": section(PROTOCOLS),
        "filters": filters,
        "cache": omit_if(equals(RouteCacheConfig()), section(ROUTE_CACHE)),
        "hls": omit_if(equals(RouteHlsConfig()), section(ROUTE_HLS)),
        "compression": optional_section(compression.COMPRESSION, compression.compression),
        "allow": omit_if(is_empty, networks),
        "deny": omit_if(is_empty, networks),
        "cors": optional_section(edge.CORS, edge.cors),
        "signed_urls": optional_section(edge.SIGNED_URLS, edge.signed_urls),
        "rate_limit": optional_section(edge_limits.RATE_LIMIT, edge_limits.rate_limit),
        "connection_limit": optional_section(edge_limits.CONNECTION_LIMIT, edge_limits.connection_limit),
        "sessions": optional_section(edge_limits.SESSIONS, edge_limits.sessions),
    },
    derived={"name": "the key the route sits under in routing"},
)


def read_routing(problems: Problems, val: Val, backends: Optional[Mapping[str, Any]]) -> Dict[str, RouteConfig]:
    """Build the routes, checking upstream names against *backends* (unless ``None``)."""
    if not isinstance(val.value, dict):
        got = describe_value(val.value)
        problems.add(val.line, "routing", f"expected a mapping of route names to routes, got {got}")
        return {}
    routes: Dict[str, RouteConfig] = {}
    first_use: Dict[Tuple[Optional[str], str], str] = {}
    for name, item in val.value.items():
        route_path = join("routing", name)
        try:
            fields = read_record(problems, item, route_path, ROUTE)
        except Reported:
            continue
        route = RouteConfig(name=name, **fields)
        if route.rate_limit is not None:
            edge_limits.check_route(problems, item, route_path, route)
        signed, sessions = route.signed_urls, route.sessions
        if signed is not None and sessions is not None and sessions.cookie in (
            signed.param_signature,
            signed.param_expires,
        ):
            given_sessions = item.value.get("sessions")
            cookie = given_sessions.value.get("cookie") if isinstance(given_sessions.value, dict) else None
            problems.add(
                (cookie or given_sessions or item).line,
                f"{route_path}.sessions.cookie",
                f"'{sessions.cookie}' is also a parameter of signed_urls (param_signature, param_expires): "
                "give the session another name",
            )
        if route.hls.enabled and not route.cache.enabled:
            hls = item.value.get("hls")
            enabled = hls.value.get("enabled") if hls is not None and isinstance(hls.value, dict) else None
            problems.add(
                (enabled or hls or item).line,
                f"{route_path}.hls.enabled",
                "needs cache.enabled: true on this route (HLS lifetimes and prefetch fill the route's cache)",
            )
        given = item.value.get("upstream")
        checkable = given is None or "upstream" in fields
        if backends is not None and checkable and route.upstream not in backends:
            problems.add(
                item.line if given is None else given.line,
                f"{route_path}.upstream",
                f"unknown upstream '{route.upstream}' (known: {', '.join(backends) or 'none'})",
            )
        key = (route.host, route.path)
        if key in first_use:
            problems.add(item.line, route_path, f"same host and path as route '{first_use[key]}'")
        else:
            first_use[key] = name
        routes[name] = route
    return routes


def write_routing(routes: Mapping[str, RouteConfig]) -> Dict[str, Any]:
    """The routes as the file has them (each under its name)."""
    return {name: write_section(ROUTE, route) for name, route in routes.items()}
