"""HTTP/2 to clients: one connection, many streams, each an exchange.

A client connection starts as a :class:`~speedproxy.proxy.client.ClientConnection`;
when its first bytes are the HTTP/2 connection preface (``PRI *
HTTP/2.0``) -- after ALPN chose ``h2`` on the TLS listener, or as h2c "prior
knowledge" on a plain one -- :func:`take_over` hands the transport to an
:class:`H2ClientConnection`.  HTTP/1.1 connections never pay for HTTP/2: the
preface is recognised where the HTTP/1.1 parser refuses it.

Each stream's request becomes an ordinary request head (pseudo-headers to
request line and ``Host``) handled by an
:class:`~speedproxy.proxy.exchange.Exchange` through an
:class:`~speedproxy.proxy.h2_stream.H2Stream`: every route, balancer, filter
and the cache work as for HTTP/1.1, and backends get HTTP/1.1 from the pool.
The exception: while some route has ``protocols.grpc``, a gRPC call on such
a route is relayed over HTTP/2 instead, by a
:class:`~speedproxy.proxy.grpc_relay.GrpcCall` in the stream's place
(:mod:`speedproxy.proxy.grpc_dispatch`).

Limits and defences: ``server.h2_max_concurrent_streams`` streams at once
(advertised; a stream past it is refused alone, RST_STREAM
``REFUSED_STREAM``, RFC 9113 5.1.2, and counts as a reset for the flood
guard); header lists (after HPACK decoding, so an HPACK bomb stops there) up to
``server.max_header_size``; at most 64 CONTINUATION frames per header block
(the h2 library); RST_STREAM, SETTINGS and PING floods close the connection
with GOAWAY ``ENHANCE_YOUR_CALM`` (:mod:`speedproxy.proxy.h2_guard`); a
stream whose window stays shut for ``server.write_timeout`` is reset (the
whole connection closed if its connection window is the shut one); a
request body that stalls for ``server.read_timeout`` is answered 408; a
connection without streams closes after ``server.idle_timeout``.  No server
push.  Extended CONNECT (RFC 8441) carries WebSockets: the stream's
``:protocol websocket`` request goes to the backend as an HTTP/1.1 Upgrade
(on routes whose ``protocols.websocket`` allows it), its 101 comes back as
a 200 and the stream's DATA is the tunnel.

A client's GOAWAY ``NO_ERROR`` is a graceful close (RFC 9113 6.8): the
streams it opened are answered, new ones refused, then the connection
closes.  A GOAWAY with an error code closes it at once.
"""

from __future__ import annotations

import base64
import os
import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, H2Error, ProtocolError as H2ProtocolError
from h2.exceptions import StreamClosedError, StreamIDTooLowError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import Frame, GoAwayFrame, RstStreamFrame
from twisted.internet import error as net_error
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from speedproxy.proxy.exchange import Exchange
from speedproxy.proxy.forwarding import sane_request_id
from speedproxy.proxy.grpc_dispatch import take_stream as take_grpc_stream
from speedproxy.proxy.h2_guard import guards
from speedproxy.proxy.h2_hpack import MemoDecoder, StaticEncoder
from speedproxy.proxy.h2_stream import H2Stream
from speedproxy.proxy.http1 import MAX_HEADER_COUNT, ProtocolError, RequestHead, parse_request_head
from speedproxy.proxy.paths import PathError, normalise_path
from speedproxy.proxy.sending import writers_for

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.client import ClientConnection
    from speedproxy.proxy.core import ProxyCore

#: The first line of the HTTP/2 connection preface (RFC 9113 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: The connection-level receive window: room for every stream's own window,
#: so a stream whose body waits never holds up the others.
CONNECTION_WINDOW = 16 * 1024 * 1024
#: How often a connection with streams checks their timeouts (seconds).
CHECK_INTERVAL = 1.0
#: Streams over the advertised limit the h2 library still lets through, for
#: us to refuse one by one; past them the client is told GOAWAY.
STREAM_SLACK = 100

_log = Logger(namespace="speedproxy.http2")


def is_preface(data: bytes) -> bool:
    """Do these first bytes of a connection start the HTTP/2 preface?"""
    return len(data) >= 16 and data[:16] == PREFACE[:16] and PREFACE.startswith(data[:24])


def take_over(old: "ClientConnection", data: bytes) -> "H2ClientConnection":
    """Serve ``old``'s connection as HTTP/2 from now on; ``data`` is all it read."""
    transport = old.transport
    core = old.core
    new = H2ClientConnection(core, old.scheme, old.peer_ip, old.peer_trusted)
    old.closing = True
    old._buffer = b""
    if hasattr(transport, "wrappedProtocol"):  # TLS: the protocol under TLSMemoryBIOProtocol
        transport.wrappedProtocol = new
    else:
        transport.protocol = new
    transport.unregisterProducer()
    core.clients.discard(old)
    core.sweeper.unwatch(old)
    new.makeConnection(transport)
    new.dataReceived(data)
    return new


#: A regular field name: a lower-case token (RFC 9113 8.2.1).
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
_PSEUDO = frozenset({b":method", b":path", b":authority", b":scheme", b":protocol"})
#: Fields that mean something only to one HTTP/1.1 hop: malformed in HTTP/2 (8.2.2).
_CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})
#: Field names seen to match :data:`_NAME` (process-wide, at most
#: :data:`_GOOD_NAMES_KEPT`): the same few names come in every request.
_GOOD_NAMES: Set[bytes] = set()
_GOOD_NAMES_KEPT = 1024


def _malformed(detail: str) -> ProtocolError:
    return ProtocolError(400, "bad_request", "malformed HTTP/2 request: " + detail)


def request_head(headers: List[Any], end_stream: bool, max_line: int) -> RequestHead:
    """The HTTP/1.1 meaning of a stream's header list (RFC 9113 8.2, 8.3).

    The checks of RFC 9113 that keep a field list from meaning something
    else once written as HTTP/1.1 are made here, in one pass (the h2
    library's own are off: they cost more than the rest of the request):
    lower-case token names, no CR, LF or NUL in values, no surrounding
    whitespace, no connection-specific fields, pseudo-headers known, first
    and once each.  ``Cookie`` fields are joined (8.2.3).

    The request an HTTP/1.1 client would have sent with these fields is
    what the stream gets: a plain request (an origin-form ASCII path, a
    token method, ``:authority``, no field :func:`parse_request_head`
    would have to judge beyond ``Content-Length``, ``X-Request-Id``,
    ``Accept`` and the trace context, no control character) is built
    straight from the fields; any other is written as an HTTP/1.1 head and
    parsed (:func:`request_head_via_http1`), so every refusal is the one
    an HTTP/1.1 request gets (tests/unit/proxy/test_proxy_http2_request_head.py
    compares both for generated field lists).

    :raises ProtocolError: 400 for a malformed list; otherwise what an
        HTTP/1.1 request with these fields would get.
    """
    pseudo = {}
    fields = []
    cookies = []
    length = False
    regular = False
    plain = True  # nothing but what the direct path below understands
    for name, value in headers:
        if value and (value[0] in b" \t" or value[-1] in b" \t"):
            raise _malformed("a field value with surrounding whitespace")
        if name[:1] == b":":
            if regular or name not in _PSEUDO or name in pseudo:
                raise _malformed("unknown, repeated or late pseudo-header %r" % name.decode("latin-1"))
            pseudo[name] = value
            continue
        regular = True
        if name not in _GOOD_NAMES:
            if _NAME.match(name) is None:
                raise _malformed("invalid field name %r" % name.decode("latin-1"))
            if len(_GOOD_NAMES) >= _GOOD_NAMES_KEPT:
                _GOOD_NAMES.clear()
            _GOOD_NAMES.add(name)
        if name in _CONNECTION_SPECIFIC:
            raise _malformed("connection-specific field %r" % name.decode("latin-1"))
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"host":
            if b":authority" in pseudo:
                continue  # :authority wins (8.3.1)
            plain = False
        elif name == b"te":
            if value != b"trailers":
                raise _malformed("TE other than trailers")
            continue  # hop-by-hop
        elif name == b"content-length":
            if length:
                plain = False  # (refused by the parser)
            length = True
        elif name in _JUDGED:
            plain = False
        fields.append((name, value))
    if plain and b":protocol" not in pseudo and (end_stream or length):
        request = _plain_request(pseudo, fields, cookies, max_line)
        if request is not None:
            return request
    return request_head_via_http1(pseudo, fields, cookies, length, end_stream, max_line)


#: Plain requests made from a header list, by (fields, end of stream, line
#: limit): clients send the same list request after request (process-wide,
#: at most :data:`_MADE_KEPT`, lists of at most :data:`_MADE_FIELDS` fields
#: making heads of at most :data:`_MADE_SIZE` bytes).
_MADE: Dict[Any, RequestHead] = {}
_MADE_KEPT = 256
_MADE_FIELDS = 32
_MADE_SIZE = 4096
_SLOTS = RequestHead.__slots__


def stream_request(headers: List[Any], end_stream: bool, max_line: int) -> RequestHead:
    """:func:`request_head`, remembered: a header list seen before gives a
    copy of the request it made then (the request is a function of the
    list; only plain requests, never a refusal, are remembered)."""
    if len(headers) > _MADE_FIELDS:
        return request_head(headers, end_stream, max_line)
    key = (tuple(headers), end_stream, max_line)
    made = _MADE.get(key)
    if made is None:
        request = request_head(headers, end_stream, max_line)
        if request.raw_size <= _MADE_SIZE and request.upgrade is None:  # (a WebSocket's has a random key)
            if len(_MADE) >= _MADE_KEPT:
                _MADE.clear()
            _MADE[key] = _copy(request)
        return request
    return _copy(made)


def _copy(request: RequestHead) -> RequestHead:
    copy = RequestHead()
    for slot in _SLOTS:
        setattr(copy, slot, getattr(request, slot))
    copy.headers = list(request.headers)
    copy.lowered = list(request.lowered)
    return copy


#: Fields whose meaning :func:`parse_request_head` judges beyond what
#: :func:`_plain_request` does: their requests take the HTTP/1.1 way.
_JUDGED = frozenset({b"expect", b"host"})
#: What a plain request's values may not hold (control bytes, DEL, bytes >= 0x80 are fine).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_PLAIN_TARGET = re.compile(rb"/[\x21-\x7e]*\Z")
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_AUTHORITY_BAD = re.compile(rb"[\x00-\x20\x7f/\\?#@]")
_LENGTH = re.compile(rb"[0-9]{1,18}\Z")


def _plain_request(
    pseudo: Dict[bytes, bytes], fields: List[Any], cookies: List[bytes], max_line: int
) -> Optional[RequestHead]:
    """The request of a plain field list, without an HTTP/1.1 round trip;
    None when anything in it needs :func:`parse_request_head`'s judgement."""
    method = pseudo.get(b":method")
    path = pseudo.get(b":path")
    authority = pseudo.get(b":authority")
    if (
        method is None
        or path is None
        or authority is None
        or b":scheme" not in pseudo
        or method == b"CONNECT"
        or _METHOD.match(method) is None
        or _PLAIN_TARGET.match(path) is None
        or (max_line and len(method) + len(path) + 10 > max_line)
        or not authority
        or _AUTHORITY_BAD.search(authority) is not None
        or len(fields) + (2 if cookies else 1) > MAX_HEADER_COUNT
    ):
        return None
    fields = fields + [(b"host", authority)]  # (a copy: the HTTP/1.1 way may still need them as they were)
    if cookies:
        cookie = b"; ".join(cookies)
        if cookie[-1:] == b" ":
            return None  # (an empty last cookie: the parser strips the field)
        fields.append((b"cookie", cookie))
    size = len(method) + len(path) + 10  # the request line, as HTTP/1.1 would have had it
    content_length = request_id = traceparent = tracestate = None
    event_stream = False
    lowered = []
    values = []
    for name, value in fields:
        values.append(value)
        size += len(name) + len(value) + 4
        lowered.append(name)
        if name in _SPECIAL:
            if name == b"content-length":
                if _LENGTH.match(value) is None:
                    return None
                content_length = int(value)
            elif name == b"x-request-id":
                if request_id is None:
                    request_id = value
            elif name == b"accept":
                if b"text/event-stream" in value.lower():
                    event_stream = True
            elif name == b"traceparent":
                traceparent = b"" if traceparent is not None else value  # two: invalid
            else:  # tracestate
                tracestate = value if tracestate is None else tracestate + b"," + value
    if _CONTROL.search(b"".join(values)) is not None:
        return None
    request = RequestHead()
    request.method = method
    request.target = path
    query = path.find(b"?")
    if query < 0:
        request.path = path
        request.query = b""
    else:
        request.path = path[:query]
        request.query = path[query:]
    request.version = b"HTTP/2.0"
    request.headers = fields
    request.lowered = lowered
    request.raw_size = size
    request.host = authority
    request.content_length = content_length
    request.chunked = False
    request.connection_tokens = ()
    request.keep_alive = True
    request.expect_continue = False
    request.upgrade = None
    request.request_id = request_id
    request.traceparent = traceparent
    request.tracestate = tracestate
    request.event_stream = event_stream
    return request


_SPECIAL = frozenset({b"content-length", b"x-request-id", b"accept", b"traceparent", b"tracestate"})


def request_head_via_http1(
    pseudo: Dict[bytes, bytes],
    fields: List[Any],
    cookies: List[bytes],
    length: bool,
    end_stream: bool,
    max_line: int,
) -> RequestHead:
    """:func:`request_head`'s answer the long way: the fields (checked, and
    sorted into pseudo-headers, regular fields and cookies) written as an
    HTTP/1.1 request head and given to :func:`parse_request_head`."""
    lines = [b""]
    lines += [name + b": " + value for name, value in fields]
    method = pseudo.get(b":method")
    protocol = pseudo.get(b":protocol")
    if protocol is not None:
        # Extended CONNECT (RFC 8441): a WebSocket over this stream, an
        # HTTP/1.1 Upgrade handshake towards the backend.
        if method != b"CONNECT":
            raise _malformed(":protocol without CONNECT")
        if protocol.lower() != b"websocket":
            raise ProtocolError(501, "not_implemented", "only the websocket protocol may be CONNECTed")
        method = b"GET"
        lines += (b"connection: upgrade", b"upgrade: websocket")
        if not any(line.startswith(b"sec-websocket-key: ") for line in lines):
            lines.append(b"sec-websocket-key: " + base64.b64encode(os.urandom(16)))
        end_stream = length = True  # what follows is the tunnel, not a body
    elif method == b"CONNECT":
        raise ProtocolError(405, "method_not_allowed", "CONNECT is not supported")
    path = pseudo.get(b":path")
    if method is None or not path or b":scheme" not in pseudo:
        raise _malformed("missing :method, :scheme or :path")
    if path[0] != 47 and not (path == b"*" and method == b"OPTIONS"):  # 47: "/"
        raise _malformed(":path not in origin form")  # 8.3.1: never absolute
    lines[0] = method + b" " + path + b" HTTP/1.1"
    authority = pseudo.get(b":authority")
    if authority is not None:
        lines.append(b"host: " + authority)
    if cookies:
        lines.append(b"cookie: " + b"; ".join(cookies))
    if not end_stream and not length:
        lines.append(b"transfer-encoding: chunked")  # to the backend: the body's length is unknown
    head = b"\r\n".join(lines)
    if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1 or b"\0" in head:
        raise _malformed("CR, LF or NUL in a field")
    request = parse_request_head(head, max_line)
    request.version = b"HTTP/2.0"
    return request


class _LocalSettings(Settings):
    """Our SETTINGS: ``MAX_CONCURRENT_STREAMS`` is advertised, but the h2
    library enforces only :attr:`hard_limit` (where it closes the whole
    connection); below that a stream over the limit is refused on its own."""

    hard_limit = 2**31

    @property  # type: ignore[override]
    def max_concurrent_streams(self) -> int:
        return self.hard_limit


class _ServerH2Connection(H2Connection):
    """The h2 state machine, kept open by a client's GOAWAY.

    h2 would close the connection state at once and drop what is queued,
    the answers of the streams the client still waits for included.
    """

    def _receive_frame(self, frame: Frame) -> Any:
        """h2's own (h2 4.x ``H2Connection._receive_frame``), less its first
        line: ``logger.trace("Received frame: %s", repr(frame))`` formats
        every frame for a logger that drops it (a twentieth of a request)."""
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # Closed by RST_STREAM: a stream error, RST_STREAM again; else a connection error.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    def _receive_goaway_frame(self, frame: Frame) -> Any:
        event = ConnectionTerminated()
        event.error_code = frame.error_code  # type: ignore[attr-defined]
        try:
            event.error_code = ErrorCodes(event.error_code)
        except ValueError:
            pass
        event.last_stream_id = frame.last_stream_id  # type: ignore[attr-defined]
        event.additional_data = frame.additional_data or None  # type: ignore[attr-defined]
        return [], [event]


@implementer(IPushProducer)
class H2ClientConnection(Protocol):
    """An HTTP/2 client connection: streams in, exchanges out."""

    def __init__(self, core: "ProxyCore", scheme: bytes, peer_ip: str, peer_trusted: bool) -> None:
        self.core = core
        self.clock = core.clock
        self.scheme = scheme
        self.peer_ip = peer_ip
        self.peer_trusted = peer_trusted
        #: Asked of every client connection by the admin API; a stream's are in :attr:`streams`.
        self.exchange: Optional[Exchange] = None
        self.streams: Dict[int, H2Stream] = {}
        #: Streams with response data waiting for window.
        self.blocked: Set[H2Stream] = set()
        self.deadline = 0.0
        self.closing = False
        #: Nothing more goes out: the connection is lost or failed.
        self.gone = False
        self.write_paused = False
        self.requests = 0
        self._write_deadline = 0.0
        self._batch = False
        self._flush_call: Any = None
        server = core.server
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            # request_head() checks what matters, for less than h2 would.
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        h2 = _ServerH2Connection(config)
        self.max_streams = server.h2_max_concurrent_streams
        h2.local_settings = settings = _LocalSettings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: server.h2_max_concurrent_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: server.max_header_size,
                SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,  # WebSocket over HTTP/2 (RFC 8441)
            },
        )
        settings.hard_limit = self.max_streams + STREAM_SLACK
        h2.decoder = MemoDecoder()  # type: ignore[assignment]
        # The limit holds from the first HEADERS on, not only once the client acked it.
        h2.decoder.max_header_list_size = server.max_header_size
        h2.encoder = StaticEncoder()  # type: ignore[assignment]
        self.h2 = h2
        now = core.clock.seconds()
        self._resets, self._settings, self._pings = guards(now)

    # -- connection life ---------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        self._write = writers_for(transport)[0]
        transport.registerProducer(self, True)
        core = self.core
        core.clients.add(self)  # type: ignore[arg-type]
        core.sweeper.watch(self)
        self.deadline = self.clock.seconds() + core.server.idle_timeout
        h2 = self.h2
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.send_now()

    def connectionLost(self, reason: Failure = net_error.ConnectionDone()) -> None:
        self.closing = self.gone = True
        streams = list(self.streams.values())
        for stream in streams:
            stream.client_gone()
        self.streams.clear()
        self.blocked.clear()
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        self.core.client_closed(self)  # type: ignore[arg-type]

    def flush(self) -> None:
        """Send what the h2 state machine has queued, at the end of this reactor turn.

        The answers of several streams that complete in one turn leave in
        one write (one system call), not one each.
        """
        if self._batch or self._flush_call is not None:
            return
        self._flush_call = self.core.reactor.callLater(0, self.send_now)  # type: ignore[attr-defined]

    def send_now(self) -> None:
        """Send what the h2 state machine has queued."""
        self._flush_call = None
        data = self.h2.data_to_send()
        if data:
            self._write(data)

    def close_when_idle(self) -> None:
        """Graceful shutdown: GOAWAY, finish the open streams, then close."""
        if self.closing:
            return
        self.closing = True
        # GOAWAY written past the h2 state machine, which would refuse to
        # send anything more, the answers of the open streams included.
        self.send_now()
        self._write(GoAwayFrame(0, last_stream_id=self.h2.highest_inbound_stream_id).serialize())
        if not self.streams:
            self.transport.loseConnection()

    def _fail(self, code: int, why: bytes = b"") -> None:
        """Close the connection at once with GOAWAY ``code``."""
        if why:
            _log.warn(
                "HTTP/2 connection from {peer} closed ({code}): {why}",
                peer=self.peer_ip,
                code=ErrorCodes(code).name if code in ErrorCodes._value2member_map_ else code,
                why=why.decode("ascii"),
            )
        self.closing = self.gone = True
        try:
            self.h2.close_connection(code, additional_data=why or None)
        except H2Error:
            pass
        self._batch = False
        self.send_now()
        self.transport.loseConnection()
        for stream in list(self.streams.values()):
            stream.client_gone()

    # -- reading -----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing and not self.streams:
            return
        try:
            events = self.h2.receive_data(data)
        except DenialOfServiceError as error:
            self._fail(ErrorCodes.ENHANCE_YOUR_CALM, str(error).encode("ascii", "replace"))
            return
        except H2ProtocolError as error:
            code = getattr(error, "error_code", None) or ErrorCodes.PROTOCOL_ERROR
            self._fail(code, str(error).encode("ascii", "replace"))
            return
        self._batch = True
        try:
            for event in events:
                kind = type(event)
                if kind is RequestReceived:
                    if self.closing or len(self.streams) >= self.max_streams:
                        if not self._refuse_stream(event.stream_id):
                            return
                    else:
                        self._request(event)
                elif kind is DataReceived:
                    stream = self.streams.get(event.stream_id)
                    if stream is None:
                        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    else:
                        stream.request_data(event.data, event.flow_controlled_length)
                elif kind is StreamEnded:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.request_done()
                elif kind is WindowUpdated:
                    self._window_updated(event.stream_id)
                elif kind is StreamReset:
                    if not self._stream_reset(event.stream_id):
                        return
                elif kind is RemoteSettingsChanged:
                    if not self._settings.hit(self.clock.seconds()):
                        self._fail(ErrorCodes.ENHANCE_YOUR_CALM, b"SETTINGS flood")
                        return
                    if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                        self._window_updated(0)
                elif kind is PingReceived:
                    if not self._pings.hit(self.clock.seconds()):
                        self._fail(ErrorCodes.ENHANCE_YOUR_CALM, b"PING flood")
                        return
                elif kind is ConnectionTerminated:
                    self.closing = True
                    if event.error_code != ErrorCodes.NO_ERROR or not self.streams:
                        self.transport.loseConnection()
                        return
                    # A graceful close: the open streams are answered first.
                elif kind is TrailersReceived:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.request_trailers(event.headers)
        except H2Error:
            self._fail(ErrorCodes.INTERNAL_ERROR)
            return
        finally:
            if self._batch:
                self._batch = False
                self.send_now()

    def _request(self, event: RequestReceived) -> None:
        core = self.core
        stream_id = event.stream_id
        headers = event.headers
        if core.grpc_routes and take_grpc_stream(self, stream_id, headers, event.stream_ended is not None):
            return  # a gRPC call on a gRPC route (speedproxy.proxy.grpc_relay)
        server = core.server
        head_request = False
        for name, value in headers:
            if name == b":method":
                head_request = value == b"HEAD"
                break
        stream = H2Stream(self, stream_id, head_request)
        self.streams[stream_id] = stream
        self.deadline = self.clock.seconds() + CHECK_INTERVAL
        end_stream = event.stream_ended is not None
        stream.request_ended = end_stream
        try:
            request = stream_request(headers, end_stream, server.max_request_line)
            path = normalise_path(request.path, server.merge_slashes, server.escaped_slashes == "keep")
        except ProtocolError as error:
            self._refuse(stream, error.status, error.code, error.detail)
            return
        except PathError as error:
            self._refuse(stream, 400, "bad_request", str(error))
            return
        if path is not request.path:
            if not server.forward_original_path:
                request.target = path + request.query
            request.path = path
        request_id = sane_request_id(request.request_id) or core.new_request_id()
        client_ip = (
            core.resolver.resolve(self.peer_ip, True, request.headers) if self.peer_trusted else self.peer_ip
        )
        exchange = Exchange(core, stream, request, request_id, client_ip)  # type: ignore[arg-type]
        stream.exchange = exchange
        stream.websocket = request.upgrade is not None
        self.requests += 1
        limit = server.max_body_size
        if limit and request.content_length is not None and request.content_length > limit:
            exchange.fail(413, "content_too_large", "request body exceeds %d bytes" % limit)
            return
        if not end_stream and not stream.websocket:
            stream.last_read = self.clock.seconds()
        exchange.start()

    def _refuse_stream(self, stream_id: int) -> bool:
        """Refuse a stream past the limit or the GOAWAY; False if that made it a flood."""
        self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
        if not self.closing and not self._resets.hit(self.clock.seconds()):
            self._fail(ErrorCodes.ENHANCE_YOUR_CALM, b"streams over the limit")
            return False
        return True

    def _refuse(self, stream: H2Stream, status: int, code: str, detail: str) -> None:
        """Answer a stream whose request cannot be served (the connection goes on)."""
        request_id = self.core.new_request_id()
        stream.send_error(status, code, detail, request_id, False)
        self.core.log_refusal(self, status, request_id)  # type: ignore[arg-type]
        if not stream.waiting:
            self.stream_over(stream)

    def _window_updated(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None and stream in self.blocked:
                stream.window_opened()
        else:
            for stream in list(self.blocked):
                stream.window_opened()

    def _stream_reset(self, stream_id: int) -> bool:
        """The client reset a stream; False if that made it a flood."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return True
        stream.client_gone()
        if not self._resets.hit(self.clock.seconds()):
            self._fail(ErrorCodes.ENHANCE_YOUR_CALM, b"RST_STREAM flood")
            return False
        return True

    def stream_over(self, stream: H2Stream) -> None:
        """A stream is done with: forget it (and its unread request body)."""
        if stream.over:
            return
        stream.over = True
        self.blocked.discard(stream)
        if self.streams.pop(stream.stream_id, None) is None:
            return
        if not stream.request_ended and not self.closing:
            try:
                self.h2.reset_stream(stream.stream_id, ErrorCodes.NO_ERROR)
            except H2Error:
                pass
            self.flush()
        if not self.streams:
            if self.closing:
                self.send_now()
                self.transport.loseConnection()
            elif not self.write_paused:
                self.deadline = self.clock.seconds() + self.core.server.idle_timeout

    # -- timeouts ----------------------------------------------------------------

    def on_timeout(self, now: float) -> None:
        server = self.core.server
        if self.write_paused and now >= self._write_deadline:
            self.transport.abortConnection()  # the client stopped reading
            return
        if not self.streams:
            # Idle (or a preface, a header block, that never completed).
            self._fail(ErrorCodes.NO_ERROR)
            return
        stalled = False
        for stream in list(self.streams.values()):
            if stream.tunnel:
                if 0.0 < stream.deadline <= now:
                    stream.reset(ErrorCodes.CANCEL)  # an idle WebSocket (websocket_idle_timeout)
                    continue
            if stream.blocked_since >= 0.0 and now - stream.blocked_since >= server.write_timeout:
                stalled = True
                stream.reset(ErrorCodes.CANCEL)  # the client's window stayed shut
            elif stream.last_read >= 0.0 and not stream.request_ended and now - stream.last_read >= server.read_timeout:
                exchange = stream.exchange
                if exchange is not None and not exchange.body_done:
                    stream.last_read = -1.0
                    exchange.fail(408, "request_timeout", "request body not received in time")
        if stalled and self.h2.outbound_flow_control_window <= 0:
            self._fail(ErrorCodes.ENHANCE_YOUR_CALM, b"window stalled")
            return
        if self.streams:
            self.deadline = now + CHECK_INTERVAL
        elif not self.deadline or self.deadline <= now:
            self.deadline = now + server.idle_timeout

    # -- IPushProducer: our transport's write buffer -----------------------------

    def pauseProducing(self) -> None:
        self.write_paused = True
        self._write_deadline = self.clock.seconds() + self.core.server.write_timeout
        if not self.deadline or self.deadline > self._write_deadline:
            self.deadline = self._write_deadline
        for stream in self.streams.values():
            stream.pauseProducing()

    def resumeProducing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.resumeProducing()
        now = self.clock.seconds()
        self.deadline = now + (CHECK_INTERVAL if self.streams else self.core.server.idle_timeout)

    def stopProducing(self) -> None:
        pass
