"""Edge protection: filters that keep unwanted requests away from the backends.

Each is a filter (:mod:`speedproxy.filters`) configured per route (and some
for the whole host), placed first on the route's chain by
:func:`speedproxy.routing.build_filters`, and answering locally when it
refuses, with the proxy's JSON error body and a count in
``speedproxy_refused_total{route,reason}`` (:mod:`speedproxy.edge.refusals`).
A route without any of their keys gets none of them: its path stays bare.

In chain order (:data:`BUILDERS`):

- :mod:`~speedproxy.edge.ip_lists`: ``allow`` / ``deny`` (route and ``server``);
- :mod:`~speedproxy.edge.cors`: ``cors`` (preflights answered here; CORS
  headers on every answer);
- :mod:`~speedproxy.edge.signed_urls`: ``signed_urls`` (HMAC-signed,
  expiring URLs; playlists of HLS routes carry signed URIs);
- :mod:`~speedproxy.edge.sessions`: ``sessions`` (a live session needed;
  a signed URL may start one);
- :mod:`~speedproxy.edge.rate_limit`: ``rate_limit`` (a token bucket per
  client, shared by the host's workers: :mod:`~speedproxy.edge.state`);
- :mod:`~speedproxy.edge.connection_limit`: ``connection_limit`` (requests
  in flight per client on the host).

A new edge filter adds its module to :data:`BUILDERS` (a ``build(core,
config, route)`` returning a filter or ``None``) and the route (or server)
keys it reads to :data:`ROUTE_KEYS` / :data:`SERVER_KEYS`, so a reload that
changes them rebuilds the chain.
"""

from __future__ import annotations

import importlib
from typing import Any, List, Tuple

#: Modules with a ``build(core, config, route)``, in chain order.  Sessions
#: go after ``signed_urls`` (a valid signed URL may start one: it sets
#: ``view.state["edge.signed"]``); the rate limit after sessions (its ``key:
#: session`` is the session the sessions filter found) and after ``cors``
#: (preflights are never limited); the connection limit last (a request
#: refused by another filter is never counted in flight).
BUILDERS: Tuple[str, ...] = (
    "speedproxy.edge.ip_lists",
    "speedproxy.edge.cors",
    "speedproxy.edge.signed_urls",
    "speedproxy.edge.sessions",
    "speedproxy.edge.rate_limit",
    "speedproxy.edge.connection_limit",
)

#: Route keys the edge filters are built from.
ROUTE_KEYS: Tuple[str, ...] = (
    "allow", "deny", "cors", "signed_urls", "sessions", "rate_limit", "connection_limit",
)
#: ``server`` keys the edge filters are built from (they apply to every route).
SERVER_KEYS: Tuple[str, ...] = ("allow", "deny")


def edge_key(route: Any, core: Any = None) -> Tuple[Any, ...]:
    """The settings the edge filters of ``route`` are built from."""
    server = getattr(getattr(core, "config", None), "server", None)
    return tuple(getattr(route, key, None) for key in ROUTE_KEYS) + tuple(
        getattr(server, key, None) for key in SERVER_KEYS
    )


def _configured(route: Any, core: Any) -> bool:
    if any(getattr(route, key, None) for key in ROUTE_KEYS):
        return True
    server = getattr(getattr(core, "config", None), "server", None)
    return server is not None and any(getattr(server, key, None) for key in SERVER_KEYS)


def edge_filters(route: Any, core: Any, reactor: Any = None) -> List[Any]:
    """The edge filters of ``route`` (a ``RouteConfig``), in order; ``[]`` for none.

    ``core`` is the worker's :class:`~speedproxy.proxy.core.ProxyCore`
    (config, clock, stats, router); without one (routes built for a test of
    routing alone) there are none.
    """
    if core is None or not _configured(route, core):
        return []
    config = core.config
    filters = []
    for name in BUILDERS:
        built = importlib.import_module(name).build(core, config, route)
        if built is not None:
            filters.append(built)
    return filters


def is_internal(request: Any) -> bool:
    """Is this a request the proxy makes itself (prefetch, background refresh, warm-up)?

    Those are never refused: they carry no signature and come from the
    proxy's own address.  (The exchange's client says so: ``internal`` is
    true on :class:`~speedproxy.cache.fetch.InternalClient` alone; the filters
    on every request read it inline.)
    """
    return getattr(request._exchange.client, "internal", False)

