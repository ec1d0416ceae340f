"""Pooled HTTP/2 client connections to backends (``scheme: h2c`` or ``h2``), many streams each.

A backend reached over HTTP/2 (today: the gRPC routes of
:mod:`speedproxy.proxy.grpc_relay`) gets one connection per worker, carrying
up to :data:`MAX_STREAMS` streams at once (or fewer, if the backend's
``SETTINGS_MAX_CONCURRENT_STREAMS`` says so); a stream that finds every
connection full opens another.  A connection without streams closes after
the pool's idle timeout (``server.upstream_keepalive_timeout``).

Whoever wants a stream (an :class:`IUpstreamStream`) asks
:meth:`H2UpstreamPool.open_stream`; once a connection can take it, it is
told :meth:`~IUpstreamStream.upstream_ready` and opens the stream itself with
:meth:`H2UpstreamConnection.start_stream`.  A new connection serves those
waiting for it once the backend's SETTINGS came (its
``MAX_CONCURRENT_STREAMS`` known: a backend may refuse streams over it at
once); those over that limit are told to ask the pool again
(:meth:`~IUpstreamStream.upstream_moved`).  From then on the connection hands
it the response's head, data, trailers and end, or a reset or the loss of the
connection.  Flow control is the owner's: response data is given back to the
backend's window (:meth:`H2UpstreamConnection.acknowledge`) only once the
owner passed it on, and :meth:`H2UpstreamConnection.send_data` takes only
what the backend's windows allow (the owner is told
:meth:`~IUpstreamStream.upstream_window_opened` when more fits).

A backend's GOAWAY ``NO_ERROR`` (a graceful shutdown, a maximum connection
age) lets the streams it accepted finish; no new ones go to that
connection.  Streams past its last stream id were never processed and are
reset ``REFUSED_STREAM`` towards their owner.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, NoAvailableStreamIDError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import Frame
from twisted.internet import error as net_error
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from speedproxy.proxy.h2_hpack import StaticEncoder

#: Streams one connection carries at most (fewer if the backend says so).
MAX_STREAMS = 100
#: Our receive window per stream: response bytes a backend may send ahead.
STREAM_WINDOW = 256 * 1024
#: Our receive window per connection: at least a whole stream window for each
#: stream it may carry (see :meth:`H2UpstreamConnection.connectionMade`).
CONNECTION_WINDOW = 16 * 1024 * 1024

PoolKey = Tuple[str, str, int]
_log = Logger(namespace="speedproxy.upstreams")
Headers = Sequence[Tuple[bytes, bytes]]


class IUpstreamStream(Interface):
    """The owner of one stream on an upstream HTTP/2 connection."""

    def upstream_ready(connection: "H2UpstreamConnection") -> None:
        """``connection`` can take the stream now: open it with ``start_stream``."""

    def upstream_failed(reason: str) -> None:
        """No stream could be opened: the connection was refused, timed out or lost first."""

    def upstream_moved() -> None:
        """The connection waited for is full once the backend's limit is known:
        ask :meth:`H2UpstreamPool.open_stream` again (it will not offer this one)."""

    def response_head(headers: Headers, ended: bool) -> None:
        """The response's HEADERS (``ended``: with END_STREAM, a trailers-only answer)."""

    def response_data(data: bytes, flow_length: int) -> None:
        """Response DATA; ``flow_length`` bytes are to be acknowledged once passed on."""

    def response_trailers(headers: Headers) -> None:
        """The response's trailers (the end follows)."""

    def response_ended() -> None:
        """The backend ended its side of the stream (the stream is forgotten)."""

    def upstream_reset(code: int) -> None:
        """The stream was reset (by the backend, or refused by its GOAWAY)."""

    def upstream_lost(reason: str) -> None:
        """The connection was lost while the stream was open."""

    def upstream_window_opened() -> None:
        """The backend gave window: request data that waited may go."""


class _ClientH2Connection(H2Connection):
    """The h2 state machine, kept open by a backend's GOAWAY so that the
    streams it accepted can finish (h2 would close at once)."""

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


def describe_failure(reason: Failure) -> str:
    """A short text for a connection failure (refused, timed out, reset...)."""
    if reason.check(net_error.ConnectionRefusedError):
        return "connection refused"
    if reason.check(net_error.TimeoutError):
        return "connect timed out"
    if reason.check(net_error.ConnectionDone):
        return "connection closed"
    return reason.getErrorMessage() or reason.type.__name__  # type: ignore[union-attr]


class H2UpstreamConnection(Protocol):
    """One HTTP/2 connection to a backend, many streams."""

    def __init__(self, pool: "H2UpstreamPool", key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        #: Open streams and their owners.
        self.streams: Dict[int, Any] = {}
        #: Owners waiting for the connection to be made.
        self.waiting: List[Any] = []
        self.ready = False
        #: No new streams: GOAWAY received, idle-closed, or failed.
        self.closing = False
        self.gone = False
        self._batch = False
        self._idle_call: Any = None
        #: Gives up on a backend that sends no SETTINGS (within the connect timeout).
        self._settings_call: Any = None
        #: ``h2`` (TLS): whether ALPN chose HTTP/2 is checked on the first read.
        self._alpn_pending = key[0] == "h2"
        config = H2Configuration(
            client_side=True,
            header_encoding=None,
            # The request fields were checked on the way in (speedproxy.proxy.http2.request_head);
            # the response fields are checked by the owner, for less than h2 would
            # (speedproxy.proxy.grpc_wire.malformed_field).
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
        )
        h2 = _ClientH2Connection(config)
        h2.encoder = StaticEncoder()  # type: ignore[assignment]
        h2.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.ENABLE_PUSH: 0,
                # MAX_CONCURRENT_STREAMS stays unlimited: h2 checks it before it
                # notices that a backend's late frames belong to a stream already
                # closed here (trailers after our RST_STREAM), and would fail the
                # whole connection over them.
            },
        )
        self.h2 = h2

    # -- capacity ----------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Streams this connection may carry at once."""
        return min(self.pool.max_streams, self.h2.remote_settings.max_concurrent_streams)

    @property
    def load(self) -> int:
        """Streams open or promised (owners waiting for the connection)."""
        return len(self.streams) + len(self.waiting)

    def take(self, owner: Any) -> None:
        """Serve ``owner`` now if the connection is made, else once it is."""
        self._cancel_idle()
        if self.ready:
            owner.upstream_ready(self)
            self._maybe_idle()  # in case it opened no stream after all
        else:
            self.waiting.append(owner)

    def forget_waiting(self, owner: Any) -> None:
        """``owner`` no longer wants a stream (its client went away)."""
        if owner in self.waiting:
            self.waiting.remove(owner)
        self._maybe_idle()

    # -- connection life -----------------------------------------------------------

    def connectionMade(self) -> None:
        h2 = self.h2
        h2.initiate_connection()
        # Room for every stream's whole window: answers waiting for slow
        # clients (unacknowledged) must not shut the window of the others.
        window = max(CONNECTION_WINDOW, self.pool.max_streams * STREAM_WINDOW)
        h2.increment_flow_control_window(window - 65535)
        self.flush()
        # Those waiting are served once the backend's SETTINGS came (_settings_known).
        self._settings_call = self.pool.clock.callLater(self.pool.connect_timeout, self._settings_late)
        self._maybe_idle()

    def _settings_late(self) -> None:
        """No SETTINGS within the connect timeout: not an HTTP/2 server (or a stuck one)."""
        self._settings_call = None
        if self.ready or self.gone:
            return
        timeout = self.pool.connect_timeout
        _log.warn(
            "backend {address} sent no HTTP/2 SETTINGS within {timeout}s: connection closed",
            address=self._address(), timeout=timeout,
        )
        self.closing = True
        self.pool.forget(self)
        waiting, self.waiting = self.waiting, []
        self._cancel_idle()
        if self.transport is not None:
            self.transport.loseConnection()
        for owner in waiting:
            owner.upstream_failed("no HTTP/2 SETTINGS within %gs (not an HTTP/2 server?)" % timeout)

    def _settings_known(self) -> None:
        """The backend's first SETTINGS: serve those waiting, up to its stream limit."""
        self.ready = True
        call, self._settings_call = self._settings_call, None
        if call is not None and call.active():
            call.cancel()
        waiting, self.waiting = self.waiting, []
        for owner in waiting:
            if not self.closing and len(self.streams) < self.capacity:
                owner.upstream_ready(self)
            else:
                owner.upstream_moved()
        self._maybe_idle()

    def connect_failed(self, reason: Failure) -> None:
        """The connection could not be made: every waiting owner is told."""
        self.closing = self.gone = True
        self.pool.forget(self)
        waiting, self.waiting = self.waiting, []
        text = describe_failure(reason)
        for owner in waiting:
            owner.upstream_failed(text)

    def connectionLost(self, reason: Failure = net_error.ConnectionDone()) -> None:
        self.closing = self.gone = True
        self._cancel_idle()
        call, self._settings_call = self._settings_call, None
        if call is not None and call.active():
            call.cancel()
        self.pool.forget(self)
        text = describe_failure(reason)
        waiting, self.waiting = self.waiting, []
        for owner in waiting:
            owner.upstream_failed(text)
        streams, self.streams = self.streams, {}
        if streams:
            _log.warn(
                "HTTP/2 connection to backend {address} lost with {count} streams open: {reason}",
                address=self._address(), count=len(streams), reason=text,
            )
        for owner in streams.values():
            owner.upstream_lost(text)

    def close(self) -> None:
        """Close now (shutdown, idle, operator): open streams are lost."""
        if self.gone:
            return
        self.closing = True
        self._cancel_idle()
        self.pool.forget(self)
        try:
            self.h2.close_connection()
        except H2Error:
            pass
        self.flush()
        if self.transport is not None:
            self.transport.loseConnection()

    def flush(self) -> None:
        """Send what the h2 state machine has queued (at the end of a read batch)."""
        if self._batch or self.gone or self.transport is None:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def _address(self) -> str:
        _, host, port = self.key
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -- streams ---------------------------------------------------------------------

    def start_stream(self, owner: Any, headers: Headers, end_stream: bool) -> int:
        """Open a stream for ``owner`` with the request ``headers``; its id.

        :raises H2Error: the connection cannot take it (its owner should
            count that as :meth:`IUpstreamStream.upstream_failed`).
        """
        h2 = self.h2
        try:
            stream_id = h2.get_next_available_stream_id()
        except NoAvailableStreamIDError:
            self.closing = True  # used up: finish what is open, then close
            self.pool.forget(self)
            raise
        h2.send_headers(stream_id, headers, end_stream=end_stream)
        self.streams[stream_id] = owner
        self.flush()
        return stream_id

    def send_data(self, stream_id: int, data: bytes, end: bool = False) -> int:
        """Send what the windows allow of ``data``; how many bytes went.

        ``end``: the request ends with ``data``; END_STREAM goes with its last
        frame if all of it went.
        """
        h2 = self.h2
        size = len(data)
        try:
            window = h2.local_flow_control_window(stream_id)
            frame = h2.max_outbound_frame_size
            position = 0
            while position < size and window > 0:
                take = min(size - position, window, frame)
                h2.send_data(stream_id, data[position : position + take], end_stream=end and position + take == size)
                position += take
                window -= take
        except H2Error:
            return size  # the stream is gone: nothing is to wait for it
        self.flush()
        return position

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        """The request ends with trailers (HEADERS with END_STREAM)."""
        try:
            self.h2.send_headers(stream_id, headers, end_stream=True)
        except H2Error:
            return
        self.flush()

    def end_stream(self, stream_id: int) -> None:
        """The request is complete (END_STREAM)."""
        try:
            self.h2.end_stream(stream_id)
        except H2Error:
            return
        self.flush()

    def cancel(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        """Reset a stream (its owner is done with it) and forget it."""
        if self.streams.pop(stream_id, None) is None:
            return
        try:
            self.h2.reset_stream(stream_id, code)
        except H2Error:
            pass
        self.flush()
        self._maybe_idle()

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``size`` response bytes were passed on: give the backend window for more."""
        if not size or self.gone:
            return
        try:
            self.h2.acknowledge_received_data(size, stream_id)
        except H2Error:
            return
        self.flush()

    def _stream_closed(self, stream_id: int) -> Any:
        owner = self.streams.pop(stream_id, None)
        self._maybe_idle()
        return owner

    # -- idle ------------------------------------------------------------------------

    def _maybe_idle(self) -> None:
        if self.streams or self.waiting or self.gone:
            return
        if self.closing:
            self.close()
            return
        if self._idle_call is None:
            self._idle_call = self.pool.clock.callLater(self.pool.idle_timeout, self._idle_expired)

    def _cancel_idle(self) -> None:
        call, self._idle_call = self._idle_call, None
        if call is not None and call.active():
            call.cancel()

    def _idle_expired(self) -> None:
        self._idle_call = None
        if not self.streams and not self.waiting:
            self.close()

    # -- reading ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._alpn_pending:
            self._alpn_pending = False
            chosen = getattr(self.transport, "negotiatedProtocol", b"h2")
            if chosen != b"h2":
                _log.warn(
                    "backend {address} (scheme h2) did not agree to HTTP/2 over TLS (ALPN: {chosen})",
                    address=self._address(), chosen=chosen,
                )
                self.closing = True
                self.pool.forget(self)
                self.transport.loseConnection()
                return
        try:
            events = self.h2.receive_data(data)
        except H2Error as error:
            _log.warn(
                "HTTP/2 protocol error from backend {address}: {error}", address=self._address(), error=error
            )
            self.closing = True
            self.pool.forget(self)
            try:
                self.h2.close_connection(getattr(error, "error_code", None) or ErrorCodes.PROTOCOL_ERROR)
            except H2Error:
                pass
            self.flush()
            self.transport.loseConnection()
            return
        self._batch = True
        try:
            for event in events:
                self._event(event)
        finally:
            self._batch = False
            self.flush()

    def _event(self, event: Any) -> None:
        kind = type(event)
        streams = self.streams
        if kind is DataReceived:
            owner = streams.get(event.stream_id)
            if owner is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                owner.response_data(event.data, event.flow_controlled_length)
        elif kind is ResponseReceived:
            owner = streams.get(event.stream_id)
            if owner is not None:
                owner.response_head(event.headers, event.stream_ended is not None)
        elif kind is TrailersReceived:
            owner = streams.get(event.stream_id)
            if owner is not None:
                owner.response_trailers(event.headers)
        elif kind is StreamEnded:
            owner = self._stream_closed(event.stream_id)
            if owner is not None:
                owner.response_ended()
        elif kind is StreamReset:
            owner = self._stream_closed(event.stream_id)
            if owner is not None:
                owner.upstream_reset(event.error_code)
        elif kind is WindowUpdated:
            if event.stream_id:
                owner = streams.get(event.stream_id)
                if owner is not None:
                    owner.upstream_window_opened()
            else:
                for owner in list(streams.values()):
                    owner.upstream_window_opened()
        elif kind is RemoteSettingsChanged:
            if not self.ready:
                self._settings_known()
            elif SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                for owner in list(streams.values()):
                    owner.upstream_window_opened()
        elif kind is ConnectionTerminated:
            self._goaway(event)

    def _goaway(self, event: Any) -> None:
        """A GOAWAY: no new streams; those it did not accept are refused."""
        self.closing = True
        self.pool.forget(self)
        last = event.last_stream_id if event.last_stream_id is not None else 0
        if event.error_code != ErrorCodes.NO_ERROR:
            _log.warn(
                "backend {address} sent GOAWAY {code} ({data}) with {count} streams open",
                address=self._address(), code=getattr(event.error_code, "name", event.error_code),
                data=(event.additional_data or b"").decode("utf-8", "replace"), count=len(self.streams),
            )
        for stream_id in [sid for sid in self.streams if sid > last]:
            owner = self.streams.pop(stream_id)
            owner.upstream_reset(ErrorCodes.REFUSED_STREAM)
        if event.error_code != ErrorCodes.NO_ERROR:
            self.transport.loseConnection()  # the rest is lost (connectionLost tells them)
        else:
            self._maybe_idle()


class _Connector(ClientFactory):
    """Makes one :class:`H2UpstreamConnection` (already created, owners waiting on it)."""

    def __init__(self, connection: H2UpstreamConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr: object) -> H2UpstreamConnection:
        return self.connection

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.connection.connect_failed(reason)


class H2UpstreamPool:
    """The HTTP/2 connections of one worker to its ``h2c``/``h2`` backends.

    ``tls_options_for(host)`` gives the TLS client options of an ``h2``
    backend (default: the platform's trust, SNI ``host``, ALPN ``h2``).
    """

    def __init__(
        self,
        reactor: Any,
        connect_timeout: float = 5.0,
        idle_timeout: float = 60.0,
        max_streams: int = MAX_STREAMS,
        tls_options_for: Optional[Callable[[str], Any]] = None,
    ) -> None:
        self.reactor = reactor
        self.clock = reactor
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_streams = max_streams
        self._tls_options_for = tls_options_for
        self._connections: Dict[PoolKey, List[H2UpstreamConnection]] = {}
        #: Connections that take no new streams but are not closed yet
        #: (a backend's graceful GOAWAY): their streams may still be cut.
        self._draining: Set[H2UpstreamConnection] = set()
        #: Connections opened so far (for tests and stats).
        self.opened = 0

    def configure(self, connect_timeout: float, idle_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout

    def open_stream(self, scheme: str, host: str, port: int, owner: Any) -> H2UpstreamConnection:
        """Find (or open) a connection with room for one more stream, for ``owner``."""
        key = (scheme, host, port)
        connections = self._connections.get(key)
        if connections:
            for connection in connections:
                if not connection.closing and connection.load < connection.capacity:
                    connection.take(owner)
                    return connection
        else:
            connections = self._connections[key] = []
        connection = H2UpstreamConnection(self, key)
        connections.append(connection)
        self.opened += 1
        connection.take(owner)
        connector = _Connector(connection)
        if scheme == "h2":
            self.reactor.connectSSL(host, port, connector, self._tls_options(host), self.connect_timeout)
        else:
            self.reactor.connectTCP(host, port, connector, self.connect_timeout)
        return connection

    def _tls_options(self, host: str) -> Any:
        if self._tls_options_for is not None:
            return self._tls_options_for(host)
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(host, acceptableProtocols=[b"h2"])

    def forget(self, connection: H2UpstreamConnection) -> None:
        """``connection`` takes no new streams (closing or gone)."""
        if connection.gone:
            self._draining.discard(connection)
        else:
            self._draining.add(connection)
        connections = self._connections.get(connection.key)
        if connections and connection in connections:
            connections.remove(connection)
            if not connections:
                del self._connections[connection.key]

    def connections(self, key: Optional[PoolKey] = None) -> List[H2UpstreamConnection]:
        """The connections taking new streams (to one backend, or all)."""
        if key is not None:
            return list(self._connections.get(key, ()))
        return [connection for group in self._connections.values() for connection in group]

    def open_connections(self, key: Optional[PoolKey] = None) -> List[H2UpstreamConnection]:
        """:meth:`connections`, and those draining (taking no new streams, not closed yet)."""
        draining = [connection for connection in self._draining if key is None or connection.key == key]
        return self.connections(key) + draining

    def close_backend(self, host: str, port: int) -> int:
        """Close every connection to one backend address (open streams are lost); how many."""
        closed = 0
        for connection in self.open_connections():
            if connection.key[1] == host and connection.key[2] == port:
                connection.close()
                closed += 1
        return closed

    def close(self) -> None:
        """Close every connection (shutdown)."""
        for connection in self.open_connections():
            connection.close()
