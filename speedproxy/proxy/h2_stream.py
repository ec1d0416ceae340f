"""One HTTP/2 stream, offered to an :class:`~speedproxy.proxy.exchange.Exchange`
as if it were an HTTP/1.1 client connection.

The exchange (routing, balancing, filters, the cache) is the same for both
protocols: it writes an HTTP/1.1 response, which :class:`H2Stream` turns into
a HEADERS frame and DATA frames of its stream.  The request given to the
exchange says ``HTTP/2.0``, so response bodies come unchunked (the end of a
body of unknown length is the end of the exchange).

Flow control is the backpressure: DATA waits for the client's window, and a
stream holding more than :data:`HIGH_WATER` unsent bytes pauses its own
backend read (never the other streams').  Request body bytes are given back
to the client's window only once the exchange took them; a paused exchange
(backend slow to read, still connecting) stops acknowledging, so the client
stops sending on that stream.  Bytes held so are given back (to the
connection window at least) however the stream ends: resumed, reset by the
client, or answered first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from speedproxy.proxy.errors import error_response
from speedproxy.proxy.h2_frames import send_data, send_headers
from speedproxy.proxy.h2_hpack import LONGEST, MEMORY, REPEATED, EncodedFields, encode_field

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.exchange import Exchange
    from speedproxy.proxy.http2 import H2ClientConnection

#: Unsent response bytes of one stream above which its backend read pauses.
HIGH_WATER = 256 * 1024
#: Response header fields that mean something only to one HTTP/1.1 hop.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
_BODYLESS = frozenset({204, 304})
#: HTTP/1.1 field lines of the names whose values repeat (:data:`REPEATED`:
#: ``Server``, ``Content-Type``, ``Via``...) as ((name, value), HPACK
#: encoding), process-wide and bounded like the encoder's memo.
_LINES: Dict[bytes, Tuple[Tuple[bytes, bytes], bytes]] = {}
#: The ``:status`` fields of the common statuses, encoded.
_STATUS = {
    status: encode_field(b":status", b"%d" % status)
    for status in (200, 204, 206, 301, 302, 304, 400, 403, 404, 500, 502, 503)
}


class H2Stream:
    """What an exchange needs of its client, for one HTTP/2 stream."""

    PAUSED_BY_UPSTREAM = 1
    PAUSED_CONNECTING = 2
    PAUSED_PIPELINE = 4
    PAUSED_DRAINING = 8
    #: A client's request, not one the proxy makes itself (:func:`speedproxy.edge.is_internal`).
    internal = False

    def __init__(self, connection: "H2ClientConnection", stream_id: int, head_request: bool) -> None:
        self.connection = connection
        self.core = connection.core
        self.stream_id = stream_id
        self.scheme = connection.scheme
        self.peer_ip = connection.peer_ip
        self.transport = connection.transport
        self.exchange: Optional["Exchange"] = None
        #: Never a plain socket: no splice, no sendfile into a stream.
        self.plain = False
        self.closing = False
        self.deadline = 0.0
        #: The response cannot go out now (window closed, connection paused).
        self._write_paused = False
        #: The client finished its request body (END_STREAM).
        self.request_ended = False
        #: Request body bytes taken by the exchange but not yet acknowledged.
        self.unacked = 0
        self.body_received = 0
        #: Clock time of the last request body bytes (read timeout; -1: none awaited).
        self.last_read = -1.0
        #: Clock time response data started waiting for the window (-1: not).
        self.blocked_since = -1.0
        #: The response ended (END_STREAM queued or sent) or the stream was reset.
        self.done = False
        self._paused = 0
        self._head_request = head_request
        self._in_head = True
        self._head = b""
        #: Response body bytes still expected (``-1``: until the exchange ends).
        self._remaining = -1
        self._pending: List[bytes] = []
        self._pending_size = 0
        self._end_pending = False
        #: Forgotten by the connection (:meth:`H2ClientConnection.stream_over`).
        self.over = False
        #: An extended CONNECT for a WebSocket (RFC 8441)...
        self.websocket = False
        #: ...whose backend switched protocols: DATA both ways is the tunnel.
        self.tunnel = False
        self._early: List[bytes] = []

    # -- the request side ------------------------------------------------------

    def request_data(self, data: bytes, flow_length: int) -> None:
        """DATA from the client: to the exchange, then back to the window."""
        exchange = self.exchange
        connection = self.connection
        if exchange is None or exchange.finished:
            connection.h2.acknowledge_received_data(flow_length + self.unacked, self.stream_id)
            self.unacked = 0
            return
        if self.websocket:
            if self.tunnel:
                exchange.tunnel_from_client(data)
            else:
                self._early.append(data)  # before the 200: held for the tunnel
            if self._paused:
                self.unacked += flow_length
            else:
                connection.h2.acknowledge_received_data(flow_length, self.stream_id)
            return
        self.last_read = connection.clock.seconds()
        self.body_received += len(data)
        limit = self.core.server.max_body_size
        if limit and self.body_received > limit:
            exchange.fail(413, "content_too_large", "request body exceeds %d bytes" % limit)
            connection.h2.acknowledge_received_data(flow_length, self.stream_id)
            return
        if data:
            exchange.request_body(data)
        if self._paused:
            self.unacked += flow_length
        else:
            connection.h2.acknowledge_received_data(flow_length, self.stream_id)

    def request_done(self) -> None:
        """END_STREAM from the client."""
        self.request_ended = True
        exchange = self.exchange
        if exchange is None:
            return
        if self.websocket:
            if exchange.tunnel:
                exchange.tunnel_closed(from_upstream=False)  # the client closed its side
            return
        if not exchange.body_done:
            exchange.request_body_done()

    def request_trailers(self, headers: Sequence) -> None:
        """Trailers from the client: an HTTP/1.1 backend gets none (its request
        is chunked without them), as for an HTTP/1.1 client."""

    def pause_reading(self, reason: int) -> None:
        """Stop giving the client window for its body, for ``reason``."""
        self._paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused:
                self.give_back_window()

    def give_back_window(self) -> None:
        """Acknowledge the request body bytes held back (to the connection's
        window even when the stream is over: else they are lost to it)."""
        if not self.unacked or self.connection.gone:
            return
        unacked, self.unacked = self.unacked, 0
        try:
            self.connection.h2.acknowledge_received_data(unacked, self.stream_id)
        except H2Error:
            return
        self.connection.flush()

    # -- the response side -----------------------------------------------------

    def write(self, data: bytes) -> None:
        """Take HTTP/1.1 response bytes from the exchange; send them as frames."""
        if self.done:
            return
        if self._in_head:
            head = self._head + data if self._head else data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self._head = head
                return
            self._head = b""
            data = head[end + 4 :]
            try:
                informational = not self._send_head(head[:end])
            except H2Error:
                self.done = True  # the connection is closing
                return
            if informational:
                if data:
                    self.write(data)  # an informational answer came first
                return
            if self.done or not data:
                self.connection.flush()
                return
        remaining = self._remaining
        if remaining >= 0:
            if len(data) >= remaining:
                data = data[:remaining]
                self._remaining = 0
                self._send(data, True)
            else:
                self._remaining = remaining - len(data)
                self._send(data, False)
        else:
            self._send(data, False)
        self.connection.flush()

    def write_sequence(self, parts: Sequence[bytes]) -> None:
        if len(parts) == 2 and self._in_head and not self._head and parts[0][-4:] == b"\r\n\r\n":
            # A whole head, then body (the exchange's usual): not joined only
            # to be split again.
            self.write(parts[0])
            self.write(parts[1])
            return
        self.write(b"".join(parts))

    def _send_head(self, head: bytes) -> bool:
        """Send the HEADERS of an HTTP/1.1 head; False for a 1xx answer."""
        lines = head.split(b"\r\n")
        status = int(lines[0][9:12])
        if self.websocket:
            if status == 101:
                status = 200  # the tunnel is open (RFC 8441 5)
                lines = [line for line in lines if line[:21].lower() != b"sec-websocket-accept:"]
            elif status < 300:
                # The route does not take WebSockets: its backend answered a
                # plain GET.  Not a 2xx: the client would take it for a tunnel.
                self.websocket = False
                self.send_error(501, "not_implemented", "WebSocket is not enabled on this route",
                                self.core.new_request_id(), False)
                return True
        # The fields and their HPACK encoding (h2_hpack.StaticEncoder's),
        # the lines that repeat from answer to answer taken from memory.
        field = (b":status", b"%d" % status)
        headers = EncodedFields((field,))
        parts = [_STATUS.get(status) or encode_field(*field)]
        length = -1
        known_lines = _LINES
        for line in lines[1:]:
            known = known_lines.get(line)
            if known is not None:
                headers.append(known[0])
                parts.append(known[1])
                continue
            name, _, value = line.partition(b":")
            name = name.lower()
            if name in _HOP_BY_HOP:
                continue
            value = value.strip()
            field = (name, value)
            encoded = encode_field(name, value)
            if name == b"content-length":
                length = int(value)
            elif name in REPEATED and len(line) <= LONGEST:
                if len(known_lines) >= MEMORY:
                    known_lines.clear()
                known_lines[line] = (field, encoded)
            headers.append(field)
            parts.append(encoded)
        headers.block = b"".join(parts)
        h2 = self.connection.h2
        if status < 200:
            if status != 101:
                h2.send_headers(self.stream_id, headers)
            return False
        self._in_head = False
        if self.websocket and status == 200:
            send_headers(h2, self.stream_id, headers)
            self._remaining = -1
            return True
        if self._head_request or status in _BODYLESS or length == 0:
            send_headers(h2, self.stream_id, headers, True)
            self.done = True
            self._remaining = 0
        else:
            send_headers(h2, self.stream_id, headers)
            self._remaining = length
        return True

    def _send(self, data: bytes, end: bool) -> None:
        """Queue DATA for the client within its windows; the rest waits."""
        if end:
            self.done = True
        if self._pending:
            self._pending.append(data)
            self._pending_size += len(data)
            self._end_pending = end
            if self._pending_size > HIGH_WATER and not self._write_paused:
                self._pause_upstream()
            return
        h2 = self.connection.h2
        stream_id = self.stream_id
        size = len(data)
        try:
            window = h2.local_flow_control_window(stream_id)
            frame = h2.max_outbound_frame_size
            if size <= window and size <= frame:
                send_data(h2, stream_id, data, end)
                return
            position = 0
            while position < size and window > 0:
                take = min(size - position, window, frame)
                send_data(h2, stream_id, data[position : position + take], end and position + take == size)
                position += take
                window -= take
        except H2Error:
            self.done = True
            return
        if position < size:
            self._pending.append(data[position:])
            self._pending_size = size - position
            self._end_pending = end
            self.blocked_since = self.connection.clock.seconds()
            self.connection.blocked.add(self)
            if self._pending_size > HIGH_WATER:
                self._pause_upstream()
        elif end and not size:
            send_data(h2, stream_id, b"", True)

    def window_opened(self) -> None:
        """The client gave window: send what waits."""
        if not self._pending:
            self.connection.blocked.discard(self)
            return
        data = b"".join(self._pending)
        end = self._end_pending
        self._pending = []
        self._pending_size = 0
        self.blocked_since = -1.0
        self.connection.blocked.discard(self)
        self._send(data, end)
        if not self._pending:
            if self._write_paused and not self.connection.write_paused:
                self._resume_upstream()
            if end and self.exchange is None:
                self.connection.stream_over(self)

    def _pause_upstream(self) -> None:
        self._write_paused = True
        exchange = self.exchange
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.pause_reading()

    def _resume_upstream(self) -> None:
        self._write_paused = False
        exchange = self.exchange
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.resume_reading()

    # The connection's transport is full (or has room again): every stream
    # stops (or resumes) reading its backend.
    def pauseProducing(self) -> None:
        if not self._write_paused:
            self._pause_upstream()

    def resumeProducing(self) -> None:
        if self._write_paused and self._pending_size <= HIGH_WATER:
            self._resume_upstream()

    def stopProducing(self) -> None:
        pass

    def body_blocked(self, blocked: bool) -> None:
        """Only sendfile reports this, and a stream is never sent with it."""

    @property
    def waiting(self) -> bool:
        """Is response data still waiting for window?"""
        return bool(self._pending)

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
        """Answer with a JSON error; return its size."""
        data = error_response(status, code, detail, request_id, self.core.server_tag, False, head_only, extra)
        self.write(data)
        return len(data)

    def enter_tunnel(self, exchange: "Exchange") -> None:
        """After the 200 of an extended CONNECT: DATA both ways is the tunnel."""
        self.tunnel = True
        self.deadline = self.connection.clock.seconds() + self.core.server.websocket_idle_timeout
        early, self._early = self._early, []
        for data in early:
            exchange.tunnel_from_client(data)
        if self.request_ended:
            exchange.tunnel_closed(from_upstream=False)

    # -- the end -------------------------------------------------------------

    def exchange_finished(self, exchange: "Exchange", keep_alive: bool, abort: bool = False) -> None:
        """The exchange is over: end the stream (or reset it if it broke off)."""
        if self.exchange is not exchange:
            return
        self.exchange = None
        connection = self.connection
        self.give_back_window()  # no one is left to take the body
        if abort:
            self.reset(ErrorCodes.INTERNAL_ERROR)
            return
        if not self.done:
            if self._in_head:
                self.reset(ErrorCodes.INTERNAL_ERROR)  # no head was ever written
                return
            self._send(b"", True)
            connection.flush()
        if not self._pending:
            connection.stream_over(self)

    def reset(self, code: int) -> None:
        """Reset the stream (our side); the exchange, if any, is told."""
        if self.over:
            return
        self.done = True
        self._pending = []
        self._pending_size = 0
        connection = self.connection
        try:
            connection.h2.reset_stream(self.stream_id, code)
        except H2Error:
            pass
        connection.flush()
        self.client_gone()

    def client_gone(self) -> None:
        """The stream is over for the client (reset, connection lost)."""
        if self.over:
            return
        self.done = True
        self._pending = []
        connection = self.connection
        connection.blocked.discard(self)
        self.give_back_window()
        exchange = self.exchange
        self.exchange = None
        if exchange is not None:
            exchange.client_lost()
        connection.stream_over(self)
