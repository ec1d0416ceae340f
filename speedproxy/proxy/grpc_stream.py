"""The client's side of a gRPC call: one stream of an HTTP/2 client connection.

:class:`GrpcStream` is what :class:`~speedproxy.proxy.http2.H2ClientConnection`
asks of a stream (as it asks an :class:`~speedproxy.proxy.h2_stream.H2Stream`):
it sends the answer's head, messages and trailers within the client's flow
control windows, queueing what does not fit until the client gives window,
and ends the stream with a status of the proxy's own when need be (a
trailers-only answer, or trailers after what was sent).
:class:`~speedproxy.proxy.grpc_relay.GrpcCall` adds the backend side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

from h2.exceptions import H2Error

from speedproxy.proxy.grpc_wire import trailers, trailers_only

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.http2 import H2ClientConnection


class GrpcStream:
    """A client stream carrying a gRPC call: the answer's way to the client."""

    def __init__(self, connection: "H2ClientConnection", stream_id: int) -> None:
        self.connection = connection
        self.core = connection.core
        self.stream_id = stream_id
        # What the client connection reads of its streams.
        self.exchange = None
        self.tunnel = False
        self.over = False
        self.request_ended = False
        self.deadline = 0.0
        self.last_read = -1.0
        self.blocked_since = -1.0
        #: The HTTP status of the answer (logged), and its gRPC status once known.
        self.status = 200
        self.grpc_status: Optional[int] = None
        self.head_sent = False
        self.finished = False
        self._client_paused = False
        #: Answer bytes waiting for the client's window.
        self._down: List[bytes] = []
        self._down_size = 0
        #: What ends the client stream once the data before it is sent: trailers, or [] (a bare END_STREAM).
        self._down_end: Optional[List[Tuple[bytes, bytes]]] = None

    # -- what the call behind it does -----------------------------------------------

    def _passed_on(self) -> None:
        """Everything queued so far went into the client's window."""

    def _finish(self) -> None:
        """The client stream ended (the end, or a status, was sent)."""
        raise NotImplementedError

    def client_gone(self) -> None:
        """The client reset the stream or its connection was lost."""
        raise NotImplementedError

    # -- the answer --------------------------------------------------------------------

    def _ack_client_now(self, size: int) -> None:
        """Give ``size`` request bytes back to the client's windows (they went on)."""
        connection = self.connection
        if not size or connection.gone:
            return
        try:
            connection.h2.acknowledge_received_data(size, self.stream_id)
        except H2Error:
            return
        connection.flush()

    def _client_send_headers(self, headers: List[Tuple[bytes, bytes]], end: bool) -> bool:
        """Send the answer's head (``end``: a trailers-only answer); False if the client is gone."""
        connection = self.connection
        if connection.gone:
            return False
        try:
            connection.h2.send_headers(self.stream_id, headers, end_stream=end)
        except H2Error:
            self.client_gone()
            return False
        connection.flush()
        return True

    def _send_down(self, data: bytes) -> None:
        """Send ``data`` within the client's windows; queue the rest."""
        connection = self.connection
        h2 = connection.h2
        stream_id = self.stream_id
        size = len(data)
        position = 0
        try:
            window = h2.local_flow_control_window(stream_id)
            frame = h2.max_outbound_frame_size
            while position < size and window > 0:
                take = min(size - position, window, frame)
                h2.send_data(stream_id, data[position : position + take])
                position += take
                window -= take
        except H2Error:
            self.client_gone()
            return
        if position < size:
            self._down.append(data[position:] if position else data)
            self._down_size += size - position
            self.blocked_since = connection.clock.seconds()
            connection.blocked.add(self)  # type: ignore[arg-type]
        elif not self._client_paused:
            self._passed_on()

    def window_opened(self) -> None:
        """The client gave window: send what waits (then the end, if it came)."""
        connection = self.connection
        if not self._down:
            connection.blocked.discard(self)  # type: ignore[arg-type]
            return
        pending = b"".join(self._down)
        self._down = []
        self._down_size = 0
        self.blocked_since = -1.0
        connection.blocked.discard(self)  # type: ignore[arg-type]
        self._send_down(pending)
        if not self._down and self._down_end is not None and not self.finished:
            self._send_end()
        connection.flush()

    def _end_down(self, end: List[Tuple[bytes, bytes]]) -> None:
        """End the client stream with ``end`` (trailers, or nothing) once queued data is sent."""
        self._down_end = end
        if not self._down:
            self._send_end()

    def _send_end(self) -> None:
        """Send the trailers (or a bare END_STREAM): the call is over for the client."""
        end = self._down_end or []
        connection = self.connection
        if connection.gone:
            self.client_gone()
            return
        try:
            if end:
                connection.h2.send_headers(self.stream_id, end, end_stream=True)
            else:
                connection.h2.send_data(self.stream_id, b"", end_stream=True)
        except H2Error:
            self.client_gone()
            return
        connection.flush()
        self._finish()

    def answer(self, code: int, message: str, drop: bool = False) -> None:
        """End the call with a status of the proxy's own: a trailers-only answer, or
        trailers after the messages relayed (those still queued are dropped if ``drop``)."""
        if self.finished:
            return
        self.grpc_status = code
        if not self.head_sent:
            self.head_sent = True
            self.status = 200
            if self._client_send_headers(trailers_only(code, message), True):
                self._finish()
            return
        if drop:
            self._down = []
            self._down_size = 0
            self.connection.blocked.discard(self)  # type: ignore[arg-type]
        self._end_down(trailers(code, message))

    def reset(self, code: int) -> None:
        """Reset the client stream (our side: a timeout, or a backend reset relayed)."""
        if self.over:
            return
        connection = self.connection
        try:
            connection.h2.reset_stream(self.stream_id, code)
        except H2Error:
            pass
        connection.flush()
        self.client_gone()

    # -- the client connection's socket is full (or has room again) -------------------

    def pauseProducing(self) -> None:
        self._client_paused = True

    def resumeProducing(self) -> None:
        self._client_paused = False
        if not self._down:
            self._passed_on()

    @property
    def waiting(self) -> bool:
        """Is response data still waiting for the client's window?"""
        return bool(self._down)
