"""``connection_limit``: requests in flight per client IP, across the host's workers.

``connection_limit: {per_client: 32, status: 503}``.  As nginx's
``limit_conn`` does, what is counted is requests being processed, not idle
TCP connections: a request counts from when its head is read until its
answer is done (a WebSocket or event stream until it closes), so
``per_client`` bounds both parallel connections and HTTP/2 streams of one
client.  Over the limit the request is answered here with ``status`` (503,
nginx's ``limit_conn_status`` default, or 429) and a JSON error.

The counts are per host (:class:`~speedproxy.edge.host_counts.HostConnectionCounts`),
as nginx's zone is, and per route: each route with the key has its own.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from speedproxy.config.model import ConnectionLimitConfig
from speedproxy.edge.host_counts import HostConnectionCounts
from speedproxy.edge import is_internal
from speedproxy.edge.refusals import refusal
from speedproxy.edge.rate_limit import _no_refusal_counter
from speedproxy.filters.base import Filter
from speedproxy.filters.messages import FilterRequest

#: ``reason`` label of ``speedproxy_refused_total`` for this filter.
REASON = "connection_limit"

_COUNTED = "edge.connection"


class ConnectionLimitFilter(Filter):
    """The ``connection_limit`` filter of one route in one worker."""

    def __init__(
        self,
        route: str,
        config: ConnectionLimitConfig,
        counts: HostConnectionCounts,
        count_refused: Callable[[str], None] = _no_refusal_counter,
    ) -> None:
        self.route = route
        self.config = config
        self.counts = counts
        self.count_refused = count_refused
        self._prefix = b"cl\0" + route.encode("utf-8") + b"\0"

    def request(self, request: FilterRequest) -> Any:
        if is_internal(request):
            return None
        key = self._prefix + request.client_ip.encode("ascii", "replace")
        allowed, _ = self.counts.acquire(key, self.config.per_client)
        if not allowed:
            self.count_refused(REASON)
            return refusal(
                request,
                self.config.status,
                "too_many_connections",
                f"more than {self.config.per_client} requests of this client in flight",
            )
        request.state[_COUNTED] = key
        return None

    def finished(self, request: FilterRequest, complete: bool) -> None:
        key = request.state.pop(_COUNTED, None)
        if key is not None:
            self.counts.release(key)


def build(core: Any, config: Any, route: Any) -> Optional[ConnectionLimitFilter]:
    """The ``connection_limit`` filter of ``route`` (``None`` without the key)."""
    if route.connection_limit is None:
        return None
    from speedproxy.edge.host_state import host_edge_for
    from speedproxy.edge.refusals import refusal_counter

    return ConnectionLimitFilter(
        route.name, route.connection_limit, host_edge_for(core).counts, refusal_counter(core, route.name)
    )
