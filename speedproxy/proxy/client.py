"""The client side of the data path: a lean HTTP/1.1 server protocol.

twisted.web's ``HTTPChannel`` and ``Request`` cost more per request than the
whole proxy budget (see bench/RESULTS.md), so client connections are served
by this protocol, which parses heads with :mod:`speedproxy.proxy.http1` and
hands each request to an :class:`~speedproxy.proxy.exchange.Exchange`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from twisted.internet import error as net_error
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from speedproxy.proxy.errors import error_response
from speedproxy.proxy.exchange import Exchange
from speedproxy.proxy.forwarding import sane_request_id
from speedproxy.proxy.http1 import ChunkedDecoder, ProtocolError, check_partial_head, parse_request_head
from speedproxy.proxy.paths import PathError, normalise_path
from speedproxy.proxy.sending import writers_for
from speedproxy.proxy.splicing import plain_tcp

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.core import ProxyCore

# What the request body currently being read is framed with.
_BODY_NONE, _BODY_LENGTH, _BODY_CHUNKED = range(3)


@implementer(IPushProducer)
class ClientConnection(Protocol):
    """One client connection: keep-alive, pipelining-safe, strict.

    Requests on a connection are handled one after another; bytes of a
    pipelined next request wait in a bounded buffer.  As the producer
    registered with its own transport, it pauses the backend read while the
    client's socket buffer is full (a slow client slows the backend, it
    never fills memory).
    """

    PAUSED_BY_UPSTREAM = 1
    PAUSED_CONNECTING = 2
    PAUSED_PIPELINE = 4
    PAUSED_DRAINING = 8
    #: A client's request, not one the proxy makes itself (:func:`speedproxy.edge.is_internal`).
    internal = False

    def __init__(self, core: "ProxyCore", scheme: bytes = b"http") -> None:
        self.core = core
        self.scheme = scheme
        self.exchange: Optional[Exchange] = None
        self.deadline = 0.0
        self.closing = False
        self.peer_ip = ""
        self.peer_trusted = False
        self.requests = 0
        #: A plain TCP connection (response bodies may be spliced into it).
        self.plain = False
        self._buffer = b""
        self._head_deadline = 0.0
        #: How much of an incomplete head in the buffer has been checked.
        self._checked = 0
        self._body = _BODY_NONE
        self._body_remaining = 0
        self._body_received = 0
        self._decoder: Optional[ChunkedDecoder] = None
        self._paused = 0
        self._write_paused = False
        self._processing = False
        self._tunnel = False

    # -- connection life ---------------------------------------------------

    def connectionMade(self) -> None:
        core = self.core
        transport = self.transport
        self.peer_ip = transport.getPeer().host
        self.write, self.write_sequence = writers_for(transport)
        self.plain = plain_tcp(transport)
        self.peer_trusted = core.resolver.is_trusted(self.peer_ip)
        transport.registerProducer(self, True)
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        core.client_opened(self)
        if core.over_connection_limit():
            self.closing = True
            self.send_error(503, "too_many_connections", "connection limit reached", core.new_request_id(), False)
            self.transport.loseConnection()
            return
        self.deadline = core.clock.seconds() + core.server.idle_timeout

    def connectionLost(self, reason: Failure = net_error.ConnectionDone()) -> None:
        self.closing = True
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            exchange.client_lost()
        self.core.client_closed(self)

    def on_timeout(self, now: float) -> None:
        self.deadline = 0.0
        if self._tunnel:
            # An idle WebSocket: close both sides.
            self.transport.loseConnection()
            return
        if self._write_paused:
            self.transport.abortConnection()  # the client stopped reading
        elif self.exchange is not None:
            if self._body != _BODY_NONE:
                self._refuse(408, "request_timeout", "request body not received in time")
        elif self._buffer:
            self._refuse(408, "request_timeout", "request head not received in time")
        else:
            self.transport.loseConnection()  # idle keep-alive connection

    def close_when_idle(self) -> None:
        """Finish the current request, then close (graceful shutdown)."""
        self.closing = True
        if self.exchange is None:
            self.transport.loseConnection()

    # -- flow control ------------------------------------------------------

    def pause_reading(self, reason: int) -> None:
        """Stop reading from the client for ``reason`` (a ``PAUSED_*`` bit)."""
        if not self._paused:
            self.transport.pauseProducing()
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        """Lift one reason to stop reading; read again once none is left."""
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and not self.closing:
                self.transport.resumeProducing()

    # IPushProducer, driven by our own transport's write buffer.
    def pauseProducing(self) -> None:
        self._write_paused = True
        self.deadline = self.core.clock.seconds() + self.core.server.write_timeout
        exchange = self.exchange
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.pause_reading()

    def resumeProducing(self) -> None:
        self._write_paused = False
        self.deadline = (
            self.core.clock.seconds() + self.core.server.websocket_idle_timeout if self._tunnel else 0.0
        )
        exchange = self.exchange
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.resume_reading()
        elif exchange is None and not self.closing:
            self.deadline = self.core.clock.seconds() + self.core.server.idle_timeout

    def stopProducing(self) -> None:
        pass

    def body_blocked(self, blocked: bool) -> None:
        """A body sent past Twisted's buffer (sendfile) waits for the client, or goes on."""
        self._write_paused = blocked
        self.deadline = self.core.clock.seconds() + self.core.server.write_timeout if blocked else 0.0

    # -- reading -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._tunnel:
            self.exchange.tunnel_from_client(data)  # type: ignore[union-attr]
            return
        if self._body != _BODY_NONE:
            self._feed_body(data)
            return
        self._buffer = self._buffer + data if self._buffer else data
        if self.exchange is None:
            self._process_buffer()
        elif len(self._buffer) > self.core.server.max_header_size:
            self.pause_reading(self.PAUSED_PIPELINE)

    def _process_buffer(self) -> None:
        """Start every complete request head waiting in the buffer, in order."""
        if self._processing:
            return
        self._processing = True
        try:
            server = self.core.server
            while self.exchange is None and not self.closing and self._buffer:
                buffer = self._buffer
                if buffer[:1] in (b"\r", b"\n"):
                    # Empty lines before a request line are ignored (RFC 9112 2.2).
                    buffer = self._buffer = buffer.lstrip(b"\r\n")
                    if not buffer:
                        return
                end = buffer.find(b"\r\n\r\n")
                if end < 0 or end > server.max_header_size:
                    if end < 0:
                        try:
                            # What has come of the head may already be invalid
                            # (bare LF, HTTP/0.9, NUL...): no waiting for a timeout.
                            self._checked = check_partial_head(buffer, server.max_request_line, self._checked)
                        except ProtocolError as error:
                            if error.status == 505 and not self.requests:
                                from speedproxy.proxy.http2 import is_preface, take_over

                                if is_preface(buffer):
                                    take_over(self, buffer)  # the start of an HTTP/2 preface
                                    return
                            self._refuse(error.status, error.code, error.detail)
                            return
                    if len(buffer) > server.max_header_size or end > server.max_header_size:
                        self._refuse(431, "request_header_fields_too_large", "request head too large")
                    elif not self._head_deadline:
                        self._head_deadline = self.core.clock.seconds() + server.read_timeout
                        self.deadline = self._head_deadline
                    return
                head = buffer[:end]
                self._buffer = buffer[end + 4 :]
                self._head_deadline = 0.0
                self._checked = 0
                self._start(head)
        finally:
            self._processing = False

    def _start(self, head: bytes) -> None:
        core = self.core
        server = core.server
        try:
            request = parse_request_head(head, server.max_request_line)
            path = normalise_path(request.path, server.merge_slashes, server.escaped_slashes == "keep")
        except ProtocolError as error:
            if error.status == 505 and head == b"PRI * HTTP/2.0" and not self.requests:
                # HTTP/2: ALPN chose h2, or h2c with prior knowledge.
                from speedproxy.proxy.http2 import take_over

                take_over(self, head + b"\r\n\r\n" + self._buffer)
                return
            self._refuse(error.status, error.code, error.detail)
            return
        except PathError as error:
            self._refuse(400, "bad_request", str(error))
            return
        if path is not request.path:
            # One meaning: the normalised path is routed, filtered, cached
            # and (unless forward_original_path) forwarded.
            if not server.forward_original_path:
                request.target = path + request.query
            request.path = path
        request_id = sane_request_id(request.request_id) or core.new_request_id()
        client_ip = (
            core.resolver.resolve(self.peer_ip, True, request.headers)
            if self.peer_trusted
            else self.peer_ip
        )
        exchange = Exchange(core, self, request, request_id, client_ip)
        self.exchange = exchange
        limit = core.server.max_body_size
        if request.chunked:
            self._body = _BODY_CHUNKED
            self._decoder = ChunkedDecoder()
            self._body_received = 0
        elif request.content_length:
            if limit and request.content_length > limit:
                exchange.fail(413, "content_too_large", "request body exceeds %d bytes" % limit)
                return
            self._body = _BODY_LENGTH
            self._body_remaining = request.content_length
        if self._body != _BODY_NONE:
            self.deadline = core.clock.seconds() + core.server.read_timeout
            if self._buffer:
                # Body bytes that came with the head are checked (and held)
                # before anything goes to a backend: a malformed chunk in the
                # first packet never reaches one.
                data = self._buffer
                self._buffer = b""
                self._feed_body(data)
                if exchange.finished:
                    return
        else:
            self.deadline = 0.0
        exchange.start()

    def _feed_body(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        self.deadline = self.core.clock.seconds() + self.core.server.read_timeout
        if self._body == _BODY_LENGTH:
            remaining = self._body_remaining
            if len(data) < remaining:
                self._body_remaining = remaining - len(data)
                exchange.request_body(data)
                return
            rest = data[remaining:]
            self._body_remaining = 0
            exchange.request_body(data[:remaining] if rest else data)
        else:
            decoder = self._decoder
            try:
                pieces = decoder.feed(data)  # type: ignore[union-attr]
            except ProtocolError as error:
                self._body = _BODY_NONE
                exchange.fail(error.status, error.code, error.detail)
                return
            limit = self.core.server.max_body_size
            for piece in pieces:
                self._body_received += len(piece)
                if limit and self._body_received > limit:
                    self._body = _BODY_NONE
                    exchange.fail(413, "content_too_large", "request body exceeds %d bytes" % limit)
                    return
                exchange.request_body(piece)
            if not decoder.done:  # type: ignore[union-attr]
                return
            rest = decoder.leftover  # type: ignore[union-attr]
            self._decoder = None
        self._body = _BODY_NONE
        self.deadline = 0.0
        if rest:
            self._buffer = self._buffer + rest if self._buffer else rest
        exchange.request_body_done()

    def enter_tunnel(self, exchange: Exchange) -> None:
        """After a 101: every byte from now on goes straight to the backend."""
        self._tunnel = True
        self._body = _BODY_NONE
        self.deadline = self.core.clock.seconds() + self.core.server.websocket_idle_timeout
        self.resume_reading(self.PAUSED_PIPELINE)
        if self._buffer:
            early, self._buffer = self._buffer, b""
            exchange.tunnel_from_client(early)

    # -- writing -----------------------------------------------------------

    def send_error(
        self,
        status: int,
        code: str,
        detail: str,
        request_id: bytes,
        keep_alive: bool,
        head_only: bool = False,
        extra: bytes = b"",
    ) -> int:
        """Write a JSON error response; return the body size."""
        data = error_response(
            status, code, detail, request_id, self.core.server_tag, keep_alive, head_only, extra
        )
        self.write(data)
        return len(data)

    def _refuse(self, status: int, code: str, detail: str) -> None:
        """Answer a request that cannot be served, then close the connection."""
        exchange = self.exchange
        if exchange is not None:
            self._body = _BODY_NONE
            exchange.fail(status, code, detail)
            return
        self.closing = True
        self._buffer = b""
        request_id = self.core.new_request_id()
        self.send_error(status, code, detail, request_id, False)
        self.core.log_refusal(self, status, request_id)
        self.transport.loseConnection()

    def exchange_finished(self, exchange: Exchange, keep_alive: bool, abort: bool = False) -> None:
        """The current exchange is over: serve the next request or close."""
        if self.exchange is not exchange:
            return
        self.exchange = None
        self.requests += 1
        if abort:
            self.closing = True
            self.transport.abortConnection()
            return
        if not keep_alive or self.closing or self._body != _BODY_NONE:
            self.closing = True
            self._body = _BODY_NONE
            self.transport.loseConnection()
            return
        if self._paused:  # (most often not: no call)
            self.resume_reading(self.PAUSED_PIPELINE | self.PAUSED_BY_UPSTREAM | self.PAUSED_CONNECTING)
        if not self._write_paused:
            self.deadline = self.core.clock.seconds() + self.core.server.idle_timeout
        if self._buffer:
            self._process_buffer()
