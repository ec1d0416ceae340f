"""Requests the proxy makes on its own: background refresh, warmup, prefetch.

:func:`fetch` builds a request head as a client would send it and runs it
through the route's whole data path (filters, balancer, pool, retries,
stats), with an :class:`InternalClient` in place of a client connection: the
response is discarded, and the cache filter on the route stores it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred

from speedproxy.proxy.exchange import Exchange
from speedproxy.proxy.http1 import parse_request_head

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.core import ProxyCore

#: The client address internal requests are logged and balanced with.
INTERNAL_ADDRESS = "127.0.0.1"


class InternalClient:
    """Stands in for a client connection; keeps what the response looked like."""

    PAUSED_BY_UPSTREAM = 1
    PAUSED_CONNECTING = 2
    PAUSED_PIPELINE = 4
    PAUSED_DRAINING = 8
    #: A request the proxy makes itself (:func:`speedproxy.edge.is_internal`).
    internal = True

    scheme = b"http"
    peer_ip = INTERNAL_ADDRESS
    plain = False
    transport: Any = None

    def __init__(self) -> None:
        self.closing = False
        self._write_paused = False
        self.deadline = 0.0
        self.exchange: Optional[Exchange] = None
        self.done: "Deferred[int]" = Deferred()
        self.received = 0

    def write(self, data: bytes) -> None:
        self.received += len(data)

    def write_sequence(self, pieces: Iterable[bytes]) -> None:
        for piece in pieces:
            self.received += len(piece)

    def send_error(self, status: int, code: str, detail: str, request_id: bytes, keep_alive: bool, head_only: bool = False) -> int:
        return 0

    def pause_reading(self, reason: int) -> None:
        pass

    def resume_reading(self, reason: int) -> None:
        pass

    def exchange_finished(self, exchange: Exchange, keep_alive: bool, abort: bool = False) -> None:
        if self.exchange is exchange:
            self.exchange = None
            if not self.done.called:
                self.done.callback(exchange.status)

    def enter_tunnel(self, exchange: Exchange) -> None:  # pragma: no cover - never upgraded
        exchange.tunnel_closed(from_upstream=False)


def fetch(
    core: "ProxyCore",
    host: bytes,
    target: bytes,
    headers: Sequence[Tuple[bytes, bytes]] = (),
    method: bytes = b"GET",
    scheme: bytes = b"http",
) -> "Deferred[int]":
    """Run ``method target`` for ``host`` through its route; fires with the status.

    ``scheme``: the one the request counts as coming in on (it is part of
    the cache key: a prefetch for a TLS client's stream says ``https``).
    """
    lines: List[bytes] = [b"%s %s HTTP/1.1" % (method, target), b"Host: " + host]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"User-Agent: speedproxy (internal)")
    request = parse_request_head(b"\r\n".join(lines))
    client = InternalClient()
    if scheme != client.scheme:
        client.scheme = scheme
    exchange = Exchange(core, client, request, core.new_request_id(), INTERNAL_ADDRESS)  # type: ignore[arg-type]
    client.exchange = exchange
    exchange.start()
    return client.done
