"""A gRPC call relayed: one client HTTP/2 stream to one backend HTTP/2 stream.

:class:`GrpcCall` (made by :func:`speedproxy.proxy.grpc_dispatch.take_stream`)
picks a backend of its route's gRPC balancer, opens a stream on the worker's
:class:`~speedproxy.proxy.h2_upstream.H2UpstreamPool` and relays request and
response heads, DATA and trailers as they are (hop-by-hop fields aside;
``X-Forwarded-*``, ``X-Real-IP``, ``Via``, ``X-Request-Id`` and
``traceparent`` are set as for HTTP/1.1).  Flow control is end to end: client
DATA is given back to the client's window once the backend's window took it,
backend DATA to the backend's once the client's window took it (and while the
client connection's socket is not full), so a slow side stalls only its own
stream.

Deadlines: the client's ``grpc-timeout`` goes to the backend as the time left;
when it passes first at the proxy, the backend's stream is reset (``CANCEL``)
and the client gets ``DEADLINE_EXCEEDED``.  Failures are gRPC statuses, never
an HTML or JSON body: no backend available, connection refused or timed out
(after the retries a call that sent nothing may have), a reset before the
answer started, a lost connection or a malformed answer give ``UNAVAILABLE``.
A backend reset after the answer started is relayed as a reset of the same
code.  Each call is access-logged with HTTP status 200 (499 when the client
went away) and its gRPC status (``grpc=``), and counted in the route's and
backend's stats.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Deque, List, Optional, Tuple

from h2.errors import ErrorCodes
from h2.exceptions import H2Error, NoAvailableStreamIDError
from zope.interface import implementer

from speedproxy.proxy.forwarding import sane_request_id
from speedproxy.proxy.grpc_stream import GrpcStream
from speedproxy.proxy.grpc_wire import (
    CANCELLED,
    DEADLINE_EXCEEDED,
    UNAVAILABLE,
    format_timeout,
    malformed_field,
    parse_timeout,
    status_of,
)
from speedproxy.proxy.h2_upstream import H2UpstreamPool, IUpstreamStream
from speedproxy.proxy.http1 import RequestHead

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.h2_upstream import H2UpstreamConnection
    from speedproxy.proxy.http2 import H2ClientConnection
    from speedproxy.routing import Route
    from speedproxy.upstreams import Backend

#: Request fields the relay sets itself (or drops) on the way to a backend.
_REPLACED = frozenset(
    {
        b"host",
        b"te",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-real-ip",
        b"x-request-id",
        b"via",
        b"traceparent",
        b"grpc-timeout",
    }
)
#: Response fields never relayed to the client.
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"})
#: HTTP status logged for a call whose client went away first (nginx's 499).
CLIENT_GONE = 499
#: Request bytes kept, until the answer starts, to send again if the backend
#: refuses the stream unprocessed (a larger request is not sent again).
REPLAY_LIMIT = 64 * 1024


@implementer(IUpstreamStream)
class GrpcCall(GrpcStream):
    """One gRPC call: a client stream (see :class:`~speedproxy.proxy.grpc_stream.GrpcStream`)
    relayed to a backend stream."""

    def __init__(
        self,
        connection: "H2ClientConnection",
        stream_id: int,
        route: "Route",
        request: RequestHead,
        headers: List[Tuple[bytes, bytes]],
        pool: H2UpstreamPool,
    ) -> None:
        super().__init__(connection, stream_id)
        core = self.core
        self.route = route
        self.request = request
        self.pool = pool
        self._headers = headers
        self.request_id = sane_request_id(request.request_id) or core.new_request_id()
        self.client_ip = (
            core.resolver.resolve(connection.peer_ip, True, request.headers)
            if connection.peer_trusted
            else connection.peer_ip
        )
        self.started = core.clock.seconds()
        self.trace = core.trace_ids.start(request)
        self.tried: List["Backend"] = []
        self.backend: Optional["Backend"] = None
        # What the access log and stats read of an exchange.
        self.queued_at = -1.0
        self.queue_time = 0.0
        self.bytes_sent = 0
        self.head_bytes = 0
        self.bytes_received = 0
        #: The backend's connection while the stream is open there.
        self.upstream: Optional["H2UpstreamConnection"] = None
        self.upstream_id = 0
        #: The connection the stream was opened on: its window is given
        #: back every byte received, however the stream ended.
        self._ack_to: Optional["H2UpstreamConnection"] = None
        #: Request bytes waiting for the backend's window, and the client's
        #: flow-controlled bytes given back once they went.
        self._up: Deque[bytes] = deque()
        self._up_unacked = 0
        self._up_ended = False
        #: The client's trailers, sent to the backend after its last DATA.
        self._up_trailers: Optional[List[Tuple[bytes, bytes]]] = None
        #: Answer bytes passed on to the client but not yet given back to the backend's window.
        self._down_unacked = 0
        self._timeout: Optional[float] = None
        self._timer: Any = None
        #: What went to the backend of the request so far, while it may be sent
        #: again (``None``: the answer started, or more than REPLAY_LIMIT went).
        self._replay: Optional[List[bytes]] = []
        self._replay_size = 0
        self._refused = 0

    # -- start -------------------------------------------------------------------

    def start(self) -> None:
        """Arm the deadline and pick a backend."""
        for name, value in self._headers:
            if name == b"grpc-timeout":
                self._timeout = parse_timeout(value)
                break
        if self._timeout is not None:
            self._timer = self.core.reactor.callLater(self._timeout, self._deadline_passed)  # type: ignore[attr-defined]
        self._connect()

    def _connect(self) -> None:
        balanced = self.route.grpc
        backend = balanced.pick(self.client_ip, self.tried)  # type: ignore[union-attr]
        if backend is None:
            if self.tried:
                self.answer(UNAVAILABLE, self._last_error)
            elif balanced.can_wait():  # type: ignore[union-attr]
                self.answer(UNAVAILABLE, "every backend is at max_conn (no queue for gRPC calls)")
            else:
                self.answer(UNAVAILABLE, "no healthy backend can take the call")
            return
        self.backend = backend
        self.tried.append(backend)
        backend.request_started()
        balanced.group.retry_budget.deposit()  # type: ignore[union-attr]
        self._open_stream(backend)

    def _open_stream(self, backend: "Backend") -> None:
        """Ask the pool for a stream to ``backend``; remember the connection waited for."""
        config = backend.config
        connection = self.pool.open_stream(config.scheme, config.host, config.port, self)
        # Unless it was served at once (then self.upstream is set), or failed and
        # was retried elsewhere or answered meanwhile.
        if self.upstream is None and not self.finished and self.backend is backend:
            self.upstream = connection

    _last_error = "no backend could be reached"

    def _upstream_headers(self) -> List[Tuple[bytes, bytes]]:
        request = self.request
        backend = self.backend
        scheme = b"https" if backend is not None and backend.config.scheme == "h2" else b"http"
        out = [
            (b":method", b"POST"),
            (b":scheme", scheme),
            (b":path", request.target),
            (b":authority", request.host or (backend.config.address.encode("ascii") if backend is not None else b"-")),
        ]
        forwarded_for = via = None
        drop_state = request.traceparent is None
        for name, value in self._headers:
            if name[:1] == b":":
                continue
            if name in _REPLACED:
                if name == b"x-forwarded-for":
                    forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
                elif name == b"via":
                    via = value if via is None else via + b", " + value
                continue
            if drop_state and name == b"tracestate":
                continue
            out.append((name, value))
        peer = self.connection.peer_ip.encode("ascii")
        out += (
            (b"te", b"trailers"),
            (b"x-forwarded-for", peer if forwarded_for is None else forwarded_for + b", " + peer),
            (b"x-real-ip", self.client_ip.encode("ascii")),
            (b"x-forwarded-proto", self.connection.scheme),
            (b"x-forwarded-host", request.host),
            (b"via", b"2 speedproxy" if via is None else via + b", 2 speedproxy"),
            (b"x-request-id", self.request_id),
        )
        trace = self.trace
        out.append((b"traceparent", b"00-%s-%s-%s" % trace))
        if self._timeout is not None:
            left = self.started + self._timeout - self.core.clock.seconds()
            out.append((b"grpc-timeout", format_timeout(max(left, 1e-9))))
        return out

    # -- IUpstreamStream: the backend side ----------------------------------------------------

    def upstream_ready(self, connection: "H2UpstreamConnection") -> None:
        if self.finished:
            connection.forget_waiting(self)
            return
        self.upstream = connection
        end = self.request_ended and not self._up and self._up_trailers is None
        try:
            self.upstream_id = connection.start_stream(self, self._upstream_headers(), end)
        except NoAvailableStreamIDError:
            # The connection used up its stream ids (it closes once its streams
            # end): a new connection to the same backend, not a failure of it.
            self.upstream = None
            if self.backend is not None:
                self._open_stream(self.backend)
            return
        except H2Error as error:
            self.upstream = None
            self.upstream_failed("the backend's connection took no new stream (%s)" % type(error).__name__)
            return
        self._ack_to = connection
        self._up_ended = end
        self._pump_up()

    def upstream_failed(self, reason: str) -> None:
        """No stream could be opened: retried on another backend while allowed (nothing was sent)."""
        self.upstream = None
        if self.finished:
            return
        backend = self.backend
        where = backend.config.address if backend is not None else "-"
        self._last_error = "backend %s: %s" % (where, reason)
        self._release(True)
        if self._may_retry():
            self._connect()
        else:
            self.answer(UNAVAILABLE, self._last_error)

    def upstream_moved(self) -> None:
        """The connection waited for was full after all: another one, to the same backend."""
        self.upstream = None
        if not self.finished and self.backend is not None:
            self._open_stream(self.backend)

    def _may_retry(self) -> bool:
        core = self.core
        if len(self.tried) > core.retries:
            return False
        group = self.route.grpc.group  # type: ignore[union-attr]
        return group.retry_budget.try_spend(core.clock.seconds())

    def response_head(self, headers: Any, ended: bool) -> None:
        if self.finished:
            return
        out = []
        size = 0
        for name, value in headers:
            if name in _HOP_BY_HOP:
                continue
            if name == b":status":
                try:
                    self.status = int(value)
                except ValueError:
                    pass
            out.append((name, value))
            size += len(name) + len(value)
        self.head_bytes = size
        bad = malformed_field(out, True)
        if bad is not None:
            self._malformed(bad)
            return
        self._replay = None  # answered: never sent again
        if ended:
            # The upstream stays known: response_ended (next) closes our side
            # of it if the request is still going (RST_STREAM NO_ERROR).
            self.grpc_status = status_of(out)
            self._release(False)
        if not self._client_send_headers(out, ended):
            return
        self.head_sent = True
        if ended:
            self._finish()

    def response_data(self, data: bytes, flow_length: int) -> None:
        if self.finished:
            self._ack_upstream(flow_length)
            return
        self.bytes_sent += len(data)
        self._down_unacked += flow_length
        if self._down:
            self._down.append(data)
            self._down_size += len(data)
            return
        self._send_down(data)
        self.connection.flush()

    def response_trailers(self, headers: Any) -> None:
        if self.finished:
            return
        out = [(name, value) for name, value in headers if name not in _HOP_BY_HOP]
        bad = malformed_field(out, False)
        if bad is not None:
            self._malformed(bad)
            return
        self.grpc_status = status_of(out)
        self._end_down(out)

    def _malformed(self, name: bytes) -> None:
        """A field of the backend's answer that the client would refuse: a backend failure."""
        self._cancel_upstream()
        self._release(True)
        shown = name.decode("latin-1")[:64]
        self.answer(UNAVAILABLE, "the backend sent a malformed header field (%r)" % shown, drop=True)

    def response_ended(self) -> None:
        """The backend's side is over (after its trailers, normally)."""
        upstream, self.upstream = self.upstream, None
        if upstream is not None and not self._up_ended:
            # The answer is complete before the request: nothing more goes to the backend.
            try:
                upstream.h2.reset_stream(self.upstream_id, ErrorCodes.NO_ERROR)
            except H2Error:
                pass
            upstream.flush()
        self._up.clear()
        self._ack_client()
        self._release(False)
        if self.finished:
            return
        if self._down_end is None:
            self._end_down([])  # no trailers: ends as it is (the client will judge)

    def upstream_reset(self, code: int) -> None:
        self.upstream = None
        if code == ErrorCodes.REFUSED_STREAM and not self.finished and not self.head_sent and self._send_again():
            return
        self._release(True)
        if self.finished:
            return
        if not self.head_sent:
            self.answer(UNAVAILABLE, "the backend reset the stream (%s)" % _code_name(code))
        else:
            self.reset(code)

    def _send_again(self) -> bool:
        """The backend refused the stream unprocessed (its GOAWAY, or REFUSED_STREAM,
        RFC 9113 8.7): open another for the request kept so far, if it was kept."""
        replay, backend = self._replay, self.backend
        if replay is None or backend is None or self._refused >= max(1, self.core.retries):
            return False
        self._refused += 1
        self._up.extendleft(reversed(replay))
        self._replay = []
        self._replay_size = 0
        self.upstream_id = 0
        self._up_ended = False
        self._open_stream(backend)
        return True

    def upstream_lost(self, reason: str) -> None:
        self.upstream = None
        self._release(True)
        if not self.finished:
            self.answer(UNAVAILABLE, "the connection to the backend was lost (%s)" % reason)

    def upstream_window_opened(self) -> None:
        if self._up and not self.finished:
            self._pump_up()

    # -- the request: client to backend ------------------------------------------------------

    def request_data(self, data: bytes, flow_length: int) -> None:
        """DATA from the client: to the backend as its window allows."""
        self.bytes_received += len(data)
        if self.finished or self.over:
            self._ack_client_now(flow_length)
            return
        self._up_unacked += flow_length
        if data:
            self._up.append(data)
        self._pump_up()

    def request_trailers(self, headers: List[Tuple[bytes, bytes]]) -> None:
        """Trailers from the client (END_STREAM follows): relayed after its last message."""
        out = [(name, value) for name, value in headers if name[:1] != b":" and name not in _HOP_BY_HOP]
        if out and malformed_field(out, False) is None:
            self._up_trailers = out

    def request_done(self) -> None:
        """END_STREAM from the client."""
        self.request_ended = True
        if not self.finished:
            self._pump_up()

    def _pump_up(self) -> None:
        upstream = self.upstream
        if upstream is None or not self.upstream_id:
            return  # not connected yet: the client's window holds the rest
        queue = self._up
        stream_id = self.upstream_id
        while queue:
            data = queue[0]
            last = self.request_ended and len(queue) == 1 and not self._up_ended and self._up_trailers is None
            sent = upstream.send_data(stream_id, data, last)
            replay = self._replay
            if replay is not None and sent:
                self._replay_size += sent
                if self._replay_size > REPLAY_LIMIT:
                    self._replay = None
                else:
                    replay.append(data[:sent] if sent < len(data) else data)
            if sent < len(data):
                queue[0] = data[sent:]
                return
            queue.popleft()
            if last and data:
                self._up_ended = True  # END_STREAM went with it
        self._ack_client()
        if self.request_ended and not self._up_ended:
            self._up_ended = True
            if self._up_trailers is not None:
                upstream.send_trailers(stream_id, self._up_trailers)
            else:
                upstream.end_stream(stream_id)

    def _ack_client(self) -> None:
        """The request so far went to the backend: the client may send more."""
        unacked, self._up_unacked = self._up_unacked, 0
        if unacked:
            self._ack_client_now(unacked)

    # -- the response: backend to client ------------------------------------------------------

    def _passed_on(self) -> None:
        """The answer so far went into the client's window: the backend may send more."""
        unacked, self._down_unacked = self._down_unacked, 0
        self._ack_upstream(unacked)

    def _ack_upstream(self, size: int) -> None:
        upstream = self._ack_to
        if size and upstream is not None:
            upstream.acknowledge(self.upstream_id, size)

    # -- endings -------------------------------------------------------------------

    def cut_by_operator(self) -> None:
        """The operator disconnected this call's backend: cancel its stream, say UNAVAILABLE."""
        if self.finished:
            return
        self._cancel_upstream()
        self._release(False)
        self.answer(UNAVAILABLE, "the backend was disconnected by an operator")

    def _deadline_passed(self) -> None:
        """The client's deadline passed first: cancel the backend's stream, say DEADLINE_EXCEEDED."""
        self._timer = None
        if self.finished:
            return
        self._cancel_upstream()
        self._release(False)
        # What waits for the client's window is dropped: the time is up.
        self.answer(DEADLINE_EXCEEDED, "deadline exceeded at the proxy", drop=True)

    def _cancel_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is None:
            return
        if self.upstream_id:
            upstream.cancel(self.upstream_id, ErrorCodes.CANCEL)
        else:
            upstream.forget_waiting(self)

    def _release(self, failed: bool) -> None:
        """Stop counting this call against its backend (idempotent)."""
        backend = self.backend
        if backend is None:
            return
        self.backend = None
        backend.request_finished(failed)
        if failed:
            backend.record_failure(self.core.clock.seconds())
        else:
            backend.record_success()
        group = backend.group
        if group is not None and group.waiting:
            group.backlog.slot_freed()  # type: ignore[union-attr]

    def _finish(self) -> None:
        """The client stream ended: log the call, forget the stream."""
        if self.finished:
            return
        self.finished = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._ack_client()
        self._passed_on()  # what was dropped too: the backend connection's window must not shrink
        self.core.log_exchange(self, self.status, self.grpc_status)  # type: ignore[arg-type]
        connection = self.connection
        if not connection.gone:
            connection.stream_over(self)  # type: ignore[arg-type]

    def client_gone(self) -> None:
        """The client reset the stream or its connection was lost: cancel the backend's."""
        if self.finished:
            if not self.over and not self.connection.gone:
                self.connection.stream_over(self)  # type: ignore[arg-type]
            return
        self._cancel_upstream()
        self._release(False)
        self._down = []
        self.connection.blocked.discard(self)  # type: ignore[arg-type]
        self.status = CLIENT_GONE
        if self.grpc_status is None:
            self.grpc_status = CANCELLED
        self._finish()
        if not self.over:
            self.connection.stream_over(self)  # type: ignore[arg-type]


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)
