"""Checks across ``routing`` and ``backends`` for gRPC routes (``protocols.grpc``).

A gRPC route relays calls over HTTP/2 (:mod:`speedproxy.proxy.grpc_relay`),
so its upstream must hold only ``h2c``/``h2`` backends; and those backends
speak nothing else, so an upstream holding them serves gRPC routes only.
The relay runs none of a route's filters, so a gRPC route that configures one
(or a ``server.allow``/``deny`` list that would not apply to it) is refused
rather than silently unprotected.  Active health checks probe with an
HTTP/1.1 GET, which an HTTP/2-only backend cannot answer.  The relay sends a
call's metadata as the client sent it, so ``upstreams.<group>`` rules
(``set_headers``, ``add_query``, ``expect_content_type``) for a gRPC
route's backends are refused too: they would be dropped silently.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from speedproxy.config.model import HTTP2_SCHEMES, RouteConfig

__all__ = ["check_grpc"]

#: Route keys that are filters (or the cache), never applied to gRPC calls.
_FILTER_KEYS = (
    "filters",
    "cache",
    "hls",
    "compression",
    "allow",
    "deny",
    "cors",
    "signed_urls",
    "rate_limit",
    "connection_limit",
    "sessions",
)


def _child(val: Any, *keys: str) -> Any:
    """The located value under ``keys`` (``None`` when absent)."""
    for key in keys:
        if val is None or not isinstance(val.value, dict):
            return None
        val = val.value.get(key)
    return val


def _line(*candidates: Any) -> Optional[int]:
    for val in candidates:
        if val is not None and getattr(val, "line", None) is not None:
            return val.line
    return None


def check_grpc(
    problems: Any,
    routing: Mapping[str, RouteConfig],
    routing_val: Any,
    backends: Optional[Mapping[str, Sequence[Any]]],
    backends_val: Any,
    server: Any,
    upstreams_val: Any = None,
) -> None:
    """Record every problem of gRPC routes and HTTP/2 backends (see the module docstring)."""
    if backends is None:
        return
    _check_upstream_rules(problems, routing, backends, upstreams_val)
    for group_name, members in backends.items():
        for index, backend in enumerate(members):
            if backend.scheme in HTTP2_SCHEMES and backend.health_check is not None:
                item = _child(backends_val, group_name)
                listed = item.value if item is not None and isinstance(item.value, list) else []
                entry = listed[index] if index < len(listed) else None
                problems.add(
                    _line(_child(entry, "health_check"), entry, backends_val),
                    f"backends.{group_name}[{index}].health_check",
                    f"active health checks are HTTP/1.1 GETs, which a scheme {backend.scheme} backend "
                    "cannot answer (passive checks apply to it without this section)",
                )
    for name, route in routing.items():
        item = _child(routing_val, name)
        members = backends.get(route.upstream)
        if members is None:
            continue  # an unknown upstream, reported already
        http2 = [backend for backend in members if backend.scheme in HTTP2_SCHEMES]
        if route.protocols.grpc == "off":
            given = _child(item, "protocols", "grpc")
            if given is not None and given.value != "off":
                continue  # an invalid balancer name, reported already
            if http2:
                shown = ", ".join(f"'{backend.id}' ({backend.scheme})" for backend in http2)
                problems.add(
                    _line(_child(item, "upstream"), item),
                    f"routing.{name}.upstream",
                    f"upstream '{route.upstream}' has HTTP/2 backends ({shown}), which serve only gRPC "
                    "calls: set protocols.grpc (a balancer name) on this route, or give them scheme http/https",
                )
            continue
        where = _line(_child(item, "protocols", "grpc"), item)
        others = [backend for backend in members if backend.scheme not in HTTP2_SCHEMES]
        if others:
            shown = ", ".join(f"'{backend.id}' ({backend.scheme})" for backend in others)
            problems.add(
                where,
                f"routing.{name}.protocols.grpc",
                f"a gRPC route needs backends with scheme h2c or h2; upstream '{route.upstream}' has {shown}",
            )
        for key in _FILTER_KEYS:
            value = getattr(route, key)
            if key in ("cache", "hls"):
                value = value.enabled
            if value:
                given = _child(item, key)
                problems.add(
                    _line(given, item),
                    f"routing.{name}.{key}",
                    "not applied to gRPC calls: a route with protocols.grpc runs no filters "
                    "(give the gRPC service a route of its own)",
                )
        for key in ("allow", "deny"):
            if getattr(server, key, ()):
                problems.add(
                    where,
                    f"routing.{name}.protocols.grpc",
                    f"server.{key} is not applied to gRPC calls: remove it, or this route's protocols.grpc",
                )


def _check_upstream_rules(
    problems: Any, routing: Mapping[str, RouteConfig], backends: Mapping[str, Sequence[Any]], upstreams_val: Any
) -> None:
    """``upstreams.<group>`` rules of a group gRPC calls go to: never applied."""
    if upstreams_val is None or not isinstance(upstreams_val.value, dict):
        return
    grpc_groups = {name for name, members in backends.items() if any(b.scheme in HTTP2_SCHEMES for b in members)}
    grpc_groups.update(route.upstream for route in routing.values() if route.protocols.grpc != "off")
    for group, entry in upstreams_val.value.items():
        if group not in grpc_groups or entry is None or not isinstance(entry.value, dict):
            continue
        for key, given in entry.value.items():
            if given is None or given.value in (None, {}, []):
                continue
            problems.add(
                _line(given, entry),
                f"upstreams.{group}.{key}",
                "not applied to gRPC calls (the relay sends a call's metadata as the client sent it): "
                "remove it, or give these backends scheme http/https",
            )
