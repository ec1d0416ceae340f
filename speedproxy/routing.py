"""Request routing: longest path prefix, optionally restricted to a Host."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from speedproxy.config.model import FilterConfig, RouteConfig
from speedproxy.filters.chain import FilterChain
from speedproxy.filters.interface import FilterContext
from speedproxy.filters.registry import find_filter_kind
from speedproxy.upstreams import BalancedGroup, UpstreamGroup


@dataclass(eq=False)
class Route:
    """A route as the data path uses it: its config and its balanced groups."""

    config: RouteConfig
    path: bytes
    host: Optional[bytes]
    #: Plain HTTP requests.
    http: BalancedGroup
    #: ``Upgrade: websocket`` requests (``None``: upgrades are not forwarded).
    websocket: Optional[BalancedGroup]
    #: Server-sent event streams (``None``: balanced as plain HTTP).
    sse: Optional[BalancedGroup]
    #: gRPC calls (``None``: not a gRPC route; else it takes nothing else,
    #: see :mod:`speedproxy.proxy.grpc_relay`).
    grpc: Optional[BalancedGroup] = None
    #: Index in the shared stats segment (-1: none).
    stats_index: int = -1
    #: The route's filters (``None``: none, the bare fast path).
    filters: Optional[FilterChain] = None
    #: The settings ``filters`` was built from (:func:`filters_key`).
    filters_key: Any = None

    @property
    def name(self) -> str:
        return self.config.name


def _host_matches(pattern: bytes, host: bytes) -> bool:
    if pattern[:2] == b"*.":
        return host.endswith(pattern[1:])
    return host == pattern


def normalise_host(host: bytes) -> bytes:
    """Lower-case a Host header value and drop its port."""
    if host[:1] == b"[":
        end = host.find(b"]")
        return host[: end + 1].lower() if end > 0 else host.lower()
    colon = host.rfind(b":")
    if colon >= 0:
        host = host[:colon]
    return host.lower()


class Router:
    """Maps (Host, path) to a :class:`Route`.

    Routes with a ``host`` are tried before host-less ones; within each, the
    longest matching path prefix wins (as nginx prefix locations do).
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes: List[Route] = sorted(
            routes, key=lambda route: (route.host is None, -len(route.path))
        )
        self._single = self.routes[0] if len(self.routes) == 1 and self.routes[0].host is None else None

    def match(self, host: bytes, path: bytes) -> Optional[Route]:
        """Return the route for a request, or ``None`` when nothing matches."""
        single = self._single
        if single is not None:
            return single if path.startswith(single.path) else None
        hostname = normalise_host(host)
        for route in self.routes:
            if route.host is not None and not _host_matches(route.host, hostname):
                continue
            if path.startswith(route.path):
                return route
        return None


def build_filters(config: RouteConfig, reactor: Any, core: Any = None) -> Optional[FilterChain]:
    """Build the filter chain of a route (``None`` when it has no filters).

    The route's cache, when enabled, is the last filter: the operator's
    filters see a request before it can be answered from the cache, and the
    cache sees the backend's response first.  With ``hls.enabled`` the HLS
    filter comes just before the cache (it tells the cache the lifetimes of
    playlists and segments, and prefetches) and its playlist rewriter just
    after it (what the cache stores and serves is the rewritten playlist).
    """
    cached = config.cache.enabled and core is not None
    from speedproxy.edge import edge_filters

    # Edge protection first: a refused request costs nothing further.
    edge = edge_filters(config, core, reactor)
    from speedproxy.cluster.ledger import accounting_filter

    counting = accounting_filter(config, core)  # traffic accounting: first, it sees every request's end
    if counting is not None:
        edge = [counting] + edge
    if not config.filters and not cached and not edge and config.compression is None:
        return None
    context = FilterContext(reactor, config.name)
    filters = edge + [find_filter_kind(entry.name).build(entry.checked, context) for entry in config.filters]
    policy = None
    if config.compression is not None:
        # First of all: its response hooks run last, on what every other
        # filter made of the response (see speedproxy.edge.compression).
        from speedproxy.edge.compression import build_compression

        policy, compressing = build_compression(config.compression, core, config.name)
        filters.insert(0, compressing)
    if cached:
        from speedproxy.cache.filter import CacheFilter

        if policy is not None:
            from speedproxy.edge.compression_copies import CompressingCacheFilter

            cache = CompressingCacheFilter(core, config.name, config.cache, policy)
        else:
            cache = CacheFilter(core, config.name, config.cache)
        if config.hls.enabled:
            from speedproxy.hls.filter import build_hls_filters

            before, after = build_hls_filters(core, config, cache)
            filters += [before, cache, after]
        else:
            filters.append(cache)
    return FilterChain(filters)


def filters_key(config: RouteConfig, core: Any = None) -> Any:
    """Everything a route's filter chain is built from (equal: the chain is kept)."""
    from speedproxy.edge import edge_key

    from speedproxy.cluster.ledger import accounting_key

    return (config.filters, config.cache, config.hls, config.compression, edge_key(config, core),
            accounting_key(config, core))


def build_routes(
    routing: Mapping[str, RouteConfig],
    groups: Mapping[str, UpstreamGroup],
    previous: Optional[Sequence[Route]] = None,
    reactor: Any = None,
    core: Any = None,
) -> List[Route]:
    """Create the routes of a config, reusing balancers whose setup is unchanged.

    A route whose filters are configured as before keeps its filter
    instances (and whatever state they hold).
    """
    reuse: Dict[Tuple[str, str, str], BalancedGroup] = {}
    chains: Dict[str, Tuple[Any, Optional[FilterChain]]] = {}
    for route in previous or ():
        chains[route.name] = (route.filters_key, route.filters)
        for kind in ("http", "websocket", "sse", "grpc"):
            balanced: Optional[BalancedGroup] = getattr(route, kind)
            if balanced is not None:
                reuse[(route.name, kind, balanced.balancer_name)] = balanced

    def balanced_for(config: RouteConfig, kind: str, balancer: str) -> Optional[BalancedGroup]:
        if balancer == "off":
            return None
        group = groups[config.upstream]
        existing = reuse.get((config.name, kind, balancer))
        if existing is not None and existing.group is group:
            existing.refresh()
            return existing
        return BalancedGroup(group, balancer)

    def filters_for(config: RouteConfig) -> Tuple[Optional[FilterChain], Any]:
        key = filters_key(config, core)
        kept = chains.get(config.name)
        if kept is not None and kept[0] == key:
            return kept[1], key
        return build_filters(config, reactor, core), key

    routes = []
    for config in routing.values():
        chain, key = filters_for(config)
        routes.append(
            Route(
                config=config,
                path=config.path.encode("utf-8"),
                host=config.host.lower().encode("utf-8") if config.host else None,
                http=balanced_for(config, "http", config.load_balancer),  # type: ignore[arg-type]
                websocket=balanced_for(config, "websocket", config.protocols.websocket),
                sse=balanced_for(config, "sse", config.protocols.sse),
                grpc=balanced_for(config, "grpc", config.protocols.grpc),
                filters=chain,
                filters_key=key,
            )
        )
    return routes
