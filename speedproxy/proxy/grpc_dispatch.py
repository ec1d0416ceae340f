"""Which HTTP/2 streams become gRPC calls, and the worker's state for them.

:func:`take_stream` is what :class:`~speedproxy.proxy.http2.H2ClientConnection`
asks of a new stream while some route has ``protocols.grpc`` (and only then:
a config without gRPC routes never looks): a ``POST`` with ``content-type:
application/grpc...`` on a gRPC route becomes a
:class:`~speedproxy.proxy.grpc_relay.GrpcCall` among the connection's
streams.  :func:`grpc_pool` is the worker's
:class:`~speedproxy.proxy.h2_upstream.H2UpstreamPool`; :func:`cut_calls`
carries out an operator's ``disconnect`` for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List

from speedproxy.proxy.grpc_relay import GrpcCall
from speedproxy.proxy.grpc_wire import is_grpc
from speedproxy.proxy.h2_upstream import H2UpstreamPool
from speedproxy.proxy.http1 import ProtocolError

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.core import ProxyCore
    from speedproxy.proxy.http2 import H2ClientConnection
    from speedproxy.upstreams import Backend

#: Seconds until the client connection looks at its streams' timeouts again.
_CHECK_SOON = 1.0


def grpc_pool(core: "ProxyCore") -> H2UpstreamPool:
    """The worker's HTTP/2 upstream pool, made on first use, following ``server.*``."""
    pool = core.h2_pool
    server = core.server
    if pool is None:
        pool = core.h2_pool = H2UpstreamPool(
            core.reactor, server.upstream_connect_timeout, server.upstream_keepalive_timeout
        )
    else:
        pool.configure(server.upstream_connect_timeout, server.upstream_keepalive_timeout)
    return pool


def cut_calls(pool: H2UpstreamPool, backend: "Backend", close_idle: bool) -> int:
    """An operator cut ``backend`` (admin ``disconnect``): end its calls in flight with
    UNAVAILABLE (not counted against its health) and, if ``close_idle``, close the
    connections to its address left without streams; how many calls and connections."""
    config = backend.config
    key = (config.scheme, config.host, config.port)
    closed = 0
    for connection in pool.open_connections(key):
        for owner in list(connection.streams.values()) + list(connection.waiting):
            if isinstance(owner, GrpcCall) and owner.backend is backend:
                owner.cut_by_operator()
                closed += 1
        if close_idle and not connection.streams and not connection.waiting:
            connection.close()
            closed += 1
    return closed


def take_stream(connection: "H2ClientConnection", stream_id: int, headers: List[Any], end_stream: bool) -> bool:
    """Serve a new stream as a gRPC call if it is one, on a gRPC route; False: not ours."""
    content_type = method = None
    for name, value in headers:
        if name == b"content-type":
            content_type = value
        elif name == b":method":
            method = value
    if method != b"POST" or not is_grpc(content_type):
        return False
    core = connection.core
    from speedproxy.proxy.http2 import request_head

    try:
        request = request_head(headers, end_stream, core.server.max_request_line)
    except ProtocolError:
        return False  # malformed: refused as any other request
    route = core.router.match(request.host, request.path)
    if route is None or route.grpc is None:
        return False
    call = GrpcCall(connection, stream_id, route, request, headers, grpc_pool(core))
    call.request_ended = end_stream
    connection.streams[stream_id] = call  # type: ignore[assignment]
    connection.deadline = connection.clock.seconds() + _CHECK_SOON
    connection.requests += 1
    call.start()
    return True
