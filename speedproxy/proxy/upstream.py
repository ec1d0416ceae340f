"""Keep-alive connections to backends and the per-worker pool that holds them."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from twisted.internet import error as net_error
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from speedproxy.proxy.sending import writers_for
from speedproxy.proxy.splicing import (
    HEAD_READ_SIZE,
    ISpliceOwner,
    MIN_SPLICE_SIZE,
    PipePool,
    Splice,
    plain_tcp,
)
from speedproxy.proxy.http1 import (
    BODYLESS_STATUS,
    ChunkedDecoder,
    ProtocolError,
    ResponseHead,
    parse_response_head,
)

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.exchange import Exchange
    from speedproxy.proxy.timeouts import TimeoutSweeper
    from speedproxy.upstreams import Backend

PoolKey = Tuple[str, str, int]

# How the body of the current response is delimited.
_NO_BODY, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)

#: Bytes asked of the kernel per read from a backend.
RECV_SIZE = 256 * 1024

_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT

#: Largest response head accepted from a backend.
MAX_RESPONSE_HEAD = 64 * 1024


@implementer(IPushProducer, ISpliceOwner)
class UpstreamConnection(Protocol):
    """One HTTP/1.1 connection to a backend, reused across requests.

    It parses response heads and frames bodies, handing everything to the
    :class:`~speedproxy.proxy.exchange.Exchange` it is attached to.  As the
    producer registered with its own transport it relays backpressure: when
    the backend cannot take more request body, the client stops being read.
    """

    exchange: Optional["Exchange"] = None
    #: Reading is paused because the client cannot take more (backpressure).
    read_paused = False
    #: Idle over ``upstream_keepalive``, with a short deadline (see ``ConnectionPool.release``).
    surplus = False

    def __init__(self, pool: "ConnectionPool", backend: "Backend", key: PoolKey) -> None:
        self.pool = pool
        self.backend = backend
        self.key = key
        self.deadline = 0.0
        self.idle = False
        self.head_only = False
        self._buffer = b""
        self._framing = _NO_BODY
        self._remaining = 0
        self._decoder: Optional[ChunkedDecoder] = None
        self._response: Optional[ResponseHead] = None
        self._reusable = True
        self._in_body = False
        self.requests = 0
        self.connected_exchange: Optional["Exchange"] = None
        #: Seconds the backend may stay silent (SSE streams get their own).
        self.read_timeout = pool.read_timeout
        #: After a 101 answer the connection is a byte tunnel.
        self.tunnel = False
        #: A plain TCP connection (bodies from it may be spliced).
        self.plain = False
        #: The body being spliced to the client, if any.
        self._splice: Optional[Splice] = None

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self.write, self.write_sequence = writers_for(transport)
        # Read large responses in fewer, bigger recv() calls.
        transport.bufferSize = RECV_SIZE
        self.plain = plain_tcp(transport)
        transport.registerProducer(self, True)
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self.pool.sweeper.watch(self)
        exchange = self.connected_exchange
        self.connected_exchange = None
        if exchange is not None:
            exchange.upstream_ready(self, False)

    def connectionLost(self, reason: Failure = net_error.ConnectionDone()) -> None:
        self.connected = False
        if self._splice is not None:
            self._splice.cancel()
            self._splice = None
        self.pool.forget(self)
        exchange = self.exchange
        self.exchange = None
        if exchange is None:
            return
        if self.tunnel:
            exchange.tunnel_closed(from_upstream=True)
        elif self._in_body and self._framing == _UNTIL_CLOSE:
            self._in_body = False
            exchange.response_done(False)
        else:
            exchange.upstream_lost(
                reason, got_response=self._response is not None or bool(self._buffer),
                reused=self.requests > 1,
            )

    def attach(self, exchange: "Exchange", head_only: bool) -> None:
        """Start serving one request for ``exchange``."""
        self.exchange = exchange
        self.head_only = head_only
        self.idle = False
        self.deadline = 0.0
        self._response = None
        self._in_body = False
        self._buffer = b""
        self.read_timeout = self.pool.read_timeout
        self.requests += 1
        if self.plain:
            # Read only the head and the start of the body if the rest may be
            # spliced to the client (see speedproxy.proxy.splicing).
            if not head_only and self.pool.pipes is not None and exchange.client.plain:
                self.transport.bufferSize = HEAD_READ_SIZE
            else:
                self.transport.bufferSize = RECV_SIZE

    def pause_reading(self) -> None:
        """Stop reading from the backend until :meth:`resume_reading`."""
        if not self.read_paused:
            self.read_paused = True
            self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Read from the backend again (a no-op unless paused)."""
        if self.read_paused:
            self.read_paused = False
            self.transport.resumeProducing()

    def arm_read_timeout(self) -> None:
        """The request is sent: the backend now has ``read_timeout`` to answer."""
        self.deadline = self.pool.clock.seconds() + self.read_timeout

    def cut(self) -> None:
        """Abort the connection; the exchange hears of it as a lost backend."""
        self._reusable = False
        if self._splice is not None:
            self._splice.cancel()
            self._splice = None
        self.transport.abortConnection()

    def abort(self) -> None:
        """Drop the connection at once; it will never be reused."""
        self.exchange = None
        self._reusable = False
        if self._splice is not None:
            self._splice.cancel()
            self._splice = None
        self.transport.abortConnection()

    def on_timeout(self, now: float) -> None:
        self.deadline = 0.0
        exchange = self.exchange
        if exchange is None:  # idle in the pool too long
            if self.surplus and self.pool.within_cap(self):
                # Those within the cap went meanwhile (a backend closes idle
                # connections itself, say): this one now counts among them.
                self.surplus = False
                self.deadline = now + max(self.pool.keepalive_timeout - SURPLUS_KEEPALIVE, 0.001)
                return
            self.retire()
            return
        self.exchange = None
        self._reusable = False
        if self._splice is not None:
            self._splice.cancel()
            self._splice = None
        self.transport.abortConnection()
        exchange.upstream_timed_out(got_response=self._response is not None)

    # -- IPushProducer: the backend's receive window ----------------------

    def pauseProducing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.client.pause_reading(exchange.client.PAUSED_BY_UPSTREAM)

    def resumeProducing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.client.resume_reading(exchange.client.PAUSED_BY_UPSTREAM)

    def stopProducing(self) -> None:
        pass

    # -- response parsing --------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # Bytes from an idle backend connection: it is not ours to reuse.
            self._reusable = False
            self.transport.abortConnection()
            return
        if self.deadline:
            self.deadline = self.pool.clock.seconds() + self.read_timeout
        if self._in_body:
            self._body(exchange, data)
            return
        if self.tunnel:
            exchange.tunnel_from_upstream(data)
            return
        buffer = self._buffer + data if self._buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_RESPONSE_HEAD:
                    self._fail(exchange, "response head too large")
                else:
                    self._buffer = buffer
                return
            try:
                response = parse_response_head(buffer[:end])
            except ProtocolError as error:
                self._fail(exchange, error.detail)
                return
            status = response.status
            if 100 <= status < 200:
                buffer = buffer[end + 4 :]
                # Interim answers (100 Continue, 103) are not relayed: the
                # proxy answers Expect itself.
                if status == 101:
                    if not exchange.upgrade:
                        self._fail(exchange, "unexpected 101 Switching Protocols")
                        return
                    # The protocol switch: from here on, bytes both ways.
                    self._buffer = b""
                    self._response = response
                    self.tunnel = True
                    self._reusable = False
                    self.deadline = 0.0
                    exchange.upgraded(response)
                    if buffer and self.exchange is exchange:
                        exchange.tunnel_from_upstream(buffer)
                    return
                continue
            break
        self._buffer = b""
        self._response = response
        self._reusable = response.keep_alive
        if self.head_only or status in BODYLESS_STATUS:
            self._framing = _NO_BODY
        elif response.chunked:
            self._framing = _CHUNKED
            self._decoder = ChunkedDecoder()
        elif response.content_length is not None:
            self._framing = _LENGTH
            self._remaining = response.content_length
        else:
            self._framing = _UNTIL_CLOSE
            self._reusable = False
        exchange.response_head(response, self._framing == _NO_BODY)
        if self.exchange is not exchange:
            return
        body_start = end + 4
        if self._framing == _NO_BODY or (self._framing == _LENGTH and not self._remaining):
            if len(buffer) > body_start:
                self._reusable = False
            self._complete(exchange)
            return
        self._in_body = True
        if len(buffer) > body_start:
            # A view, not a copy: the body may be most of a 64 KiB read.
            rest = memoryview(buffer)[body_start:] if self._framing != _CHUNKED else buffer[body_start:]
            self._body(exchange, rest)
        transport = self.transport
        # (If the body is already complete, the connection may be serving a
        # pipelined next request by now: its read size is that request's.)
        if self.exchange is exchange and transport.bufferSize != RECV_SIZE:
            if (
                self._framing == _LENGTH
                and self._remaining >= MIN_SPLICE_SIZE
                and self._start_splice(exchange)
            ):
                return
            transport.bufferSize = RECV_SIZE

    def _body(self, exchange: "Exchange", data: bytes) -> None:
        framing = self._framing
        if framing == _LENGTH:
            remaining = self._remaining
            size = len(data)
            if size < remaining:
                self._remaining = remaining - size
                exchange.response_body(data)
                return
            if size > remaining:
                self._reusable = False
                data = data[:remaining]
            self._remaining = 0
            exchange.response_body(data)
            if self.exchange is exchange:
                self._complete(exchange)
        elif framing == _CHUNKED:
            decoder = self._decoder
            try:
                pieces = decoder.feed(data)  # type: ignore[union-attr]
            except ProtocolError as error:
                self._fail(exchange, error.detail)
                return
            for piece in pieces:
                exchange.response_body(piece)
                if self.exchange is not exchange:
                    return
            if decoder.done:  # type: ignore[union-attr]
                if decoder.leftover:  # type: ignore[union-attr]
                    self._reusable = False
                self._complete(exchange)
        else:
            exchange.response_body(data)

    # -- zero-copy bodies (speedproxy.proxy.splicing) ----------------------

    def _start_splice(self, exchange: "Exchange") -> bool:
        """Relay the rest of a Content-Length body with splice(2) if possible."""
        pipes = self.pool.pipes
        if pipes is None:
            return False
        sink = exchange.splice_sink()
        if sink is None:
            return False
        pipe = pipes.get()
        if pipe is None:
            return False
        self._splice = Splice(self.transport, sink, self._remaining, self, pipes, pipe)
        self._splice.start()
        return True

    def splice_received(self, size: int) -> None:
        self._remaining -= size
        if self.deadline:
            self.deadline = self.pool.clock.seconds() + self.read_timeout

    def splice_sent(self, size: int) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.bytes_sent += size

    def splice_blocked(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.client.pauseProducing()

    def splice_unblocked(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.client.resumeProducing()

    def splice_overrun(self) -> None:
        self._reusable = False

    def splice_done(self) -> None:
        self._splice = None
        transport = self.transport
        transport.bufferSize = RECV_SIZE
        # The splice stopped at the body's end; bytes after it (or a close)
        # mean this connection must not carry another request.
        if self._reusable:
            try:
                transport.socket.recv(1, _PEEK)  # data, or b"" for a close
            except BlockingIOError:
                pass  # nothing after the body: clean
            except OSError:
                self._reusable = False
            else:
                self._reusable = False
        exchange = self.exchange
        if exchange is not None:
            self._complete(exchange)

    def _complete(self, exchange: "Exchange") -> None:
        self._in_body = False
        self._decoder = None
        self.exchange = None
        self.deadline = 0.0
        exchange.response_done(self._reusable)

    def _fail(self, exchange: "Exchange", detail: str) -> None:
        self.exchange = None
        self._reusable = False
        self.transport.abortConnection()
        exchange.upstream_bad_response(detail, got_response=self._response is not None)

    def retire(self) -> None:
        """Close an idle connection, out of the pool at once.

        ``loseConnection`` only closes it at the reactor's next write pass;
        meanwhile it must not be handed out, or a request would be written
        to a connection that is closing.
        """
        self._reusable = False
        self.pool.forget(self)
        self.transport.loseConnection()

    @property
    def reusable(self) -> bool:
        """May this connection carry another request?"""
        return self._reusable and self.connected


class _Connector(ClientFactory):
    """Opens one connection to a backend on behalf of one exchange."""

    noisy = False

    def __init__(self, pool: "ConnectionPool", backend: "Backend", key: PoolKey, exchange: "Exchange") -> None:
        self.pool = pool
        self.backend = backend
        self.key = key
        self.exchange = exchange

    def buildProtocol(self, addr: object) -> UpstreamConnection:
        connection = UpstreamConnection(self.pool, self.backend, self.key)
        connection.connected_exchange = self.exchange
        connection.factory = self  # type: ignore[attr-defined]
        return connection

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        timed_out = reason.check(net_error.TimeoutError) is not None
        self.exchange.upstream_connect_failed(reason, timed_out)


#: How long an idle connection over ``server.upstream_keepalive`` is kept.
SURPLUS_KEEPALIVE = 1.0


class ConnectionPool:
    """Idle keep-alive connections to backends, per worker.

    Connections are keyed by ``(scheme, host, port)``.  The most recently used
    idle connection is handed out first, so a light load keeps only a handful
    of connections warm and the rest time out.
    """

    def __init__(
        self,
        reactor: object,
        sweeper: "TimeoutSweeper",
        connect_timeout: float,
        read_timeout: float,
        keepalive_timeout: float,
        max_idle: int,
        tls_options_for: Optional[object] = None,
    ) -> None:
        self.reactor = reactor
        self.clock = reactor
        self.sweeper = sweeper
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_idle = max_idle
        self._tls_options_for = tls_options_for
        self._idle: Dict[PoolKey, List[UpstreamConnection]] = {}
        self.opened = 0
        #: Pipes for zero-copy bodies; ``None`` when splicing is off.
        self.pipes: Optional[PipePool] = None

    def configure(
        self, connect_timeout: float, read_timeout: float, keepalive_timeout: float, max_idle: int
    ) -> None:
        """Apply new limits; existing connections keep running."""
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_idle = max_idle

    def acquire(self, backend: "Backend", exchange: "Exchange", fresh: bool = False) -> None:
        """Get a connection to ``backend`` for ``exchange``.

        Calls ``exchange.upstream_ready(connection, reused)`` (possibly before
        returning) or ``exchange.upstream_connect_failed(reason, timed_out)``.
        ``fresh`` skips the idle connections and opens a new one.
        """
        config = backend.config
        key = (config.scheme, config.host, config.port)
        idle = None if fresh else self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.reusable:
                exchange.upstream_ready(connection, True)
                return
        self.opened += 1
        connector = _Connector(self, backend, key, exchange)
        if config.scheme == "https":
            self.reactor.connectSSL(  # type: ignore[attr-defined]
                config.host, config.port, connector, self._tls_options(config.host), self.connect_timeout
            )
        else:
            self.reactor.connectTCP(  # type: ignore[attr-defined]
                config.host, config.port, connector, self.connect_timeout
            )

    def _tls_options(self, host: str) -> object:
        if self._tls_options_for is not None:
            return self._tls_options_for(host)  # type: ignore[operator]
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(host)

    def release(self, connection: UpstreamConnection) -> None:
        """Take back a connection whose exchange finished cleanly."""
        # A slow client may have paused it; an idle connection must read, to
        # notice the backend closing it.
        connection.resume_reading()
        idle = self._idle.get(connection.key)
        if idle is None:
            idle = self._idle[connection.key] = []
        if not self.max_idle or not connection.reusable:
            connection.transport.loseConnection()
            return
        keepalive = self.keepalive_timeout
        connection.surplus = len(idle) >= self.max_idle
        if connection.surplus:
            # Over the cap: kept briefly, as HAProxy purges idle connections
            # over time instead of at once.  Under a burst of responses (more
            # concurrent requests than max_idle) the next requests reuse it
            # instead of closing one connection and opening another (on
            # loopback at 200 concurrent clients, that churn doubled the CPU
            # per request); once the burst is over it expires within a second.
            keepalive = min(keepalive, SURPLUS_KEEPALIVE)
        connection.idle = True
        connection.deadline = self.clock.seconds() + keepalive  # type: ignore[attr-defined]
        idle.append(connection)

    def within_cap(self, connection: UpstreamConnection) -> bool:
        """Whether the idle connections of ``connection``'s backend fit ``upstream_keepalive``."""
        return len(self._idle.get(connection.key, ())) <= self.max_idle

    def forget(self, connection: UpstreamConnection) -> None:
        """A connection closed: drop it from the idle list if it is there."""
        self.sweeper.unwatch(connection)
        if connection.idle:
            connection.idle = False
            idle = self._idle.get(connection.key)
            if idle and connection in idle:
                idle.remove(connection)

    def idle_count(self, key: Optional[PoolKey] = None) -> int:
        """How many idle connections are held (for one key, or in all)."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(idle) for idle in self._idle.values())

    def close_backend(self, host: str, port: int) -> int:
        """Close every idle connection to one backend address; return how many."""
        closed = 0
        for key, idle in list(self._idle.items()):
            if key[1] == host and key[2] == port:
                for connection in list(idle):
                    connection.retire()
                    closed += 1
        return closed

    def close_idle(self) -> None:
        """Close every idle connection (shutdown)."""
        for idle in list(self._idle.values()):
            for connection in list(idle):
                connection.retire()
