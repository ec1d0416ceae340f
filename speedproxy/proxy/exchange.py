"""One request/response relayed between a client and a backend."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, List, Optional

from twisted.python.failure import Failure

from twisted.logger import Logger

from speedproxy.filters.messages import FilterRequest, FilterResponse, LocalBody, LocalResponse, SharedResponse
from speedproxy.proxy.sendfile import SendFile
from speedproxy.proxy.forwarding import client_response_head, local_response, upstream_request_head
from speedproxy.proxy.http1 import LAST_CHUNK, RequestHead, ResponseHead
from speedproxy.proxy.splicing import nothing_queued
from speedproxy.tracing.context import cache_status_of_local, header_value

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.backlog import Backlog
    from speedproxy.proxy.client import ClientConnection
    from speedproxy.proxy.core import ProxyCore
    from speedproxy.proxy.upstream import UpstreamConnection
    from speedproxy.routing import Route
    from speedproxy.upstreams import Backend, BalancedGroup

_log = Logger(namespace="speedproxy.filters")

#: Methods retried on another backend even after the head reached one.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
#: Request body bytes held while the backend connection is being opened.
PENDING_LIMIT = 64 * 1024

# How the response body is framed towards the client.
_TO_CLIENT_NONE, _TO_CLIENT_RAW, _TO_CLIENT_CHUNKED = range(3)
#: What ends a body filter's last chunk: its CRLF and the last chunk.
_TAIL_END = b"\r\n" + LAST_CHUNK
#: How a held-back head framed as chunked ends (``client_response_head``:
#: the framing line, then the end of the head, with or without ``Connection: close``).
_CHUNKED_ENDS = (b"Transfer-Encoding: chunked\r\n\r\n", b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
_KEPT_ALIVE_END = _CHUNKED_ENDS[0]
_KEPT_ALIVE_CUT = -len(_KEPT_ALIVE_END)


def sized_head(head: bytes, length: int) -> Optional[bytes]:
    """``head``, framed as chunked, framed with ``Content-Length: length`` instead
    (``None`` when it does not end with the chunked framing)."""
    if head.endswith(_KEPT_ALIVE_END):  # (the common end first: once per compressed answer)
        return head[:_KEPT_ALIVE_CUT] + b"Content-Length: %d\r\n\r\n" % length
    for end in _CHUNKED_ENDS:
        if head.endswith(end):
            return b"%sContent-Length: %d\r\n%s" % (head[: -len(end)], length, end[28:])
    return None

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Exchange:
    """Relays one request to a backend and its response back to the client.

    Created by the :class:`~speedproxy.proxy.client.ClientConnection` once a
    request head is parsed; it picks a backend, borrows a pooled connection,
    streams the body both ways and, on failure before any response byte,
    retries another backend when that is safe.
    """

    __slots__ = (
        "core",
        "client",
        "request",
        "request_id",
        "client_ip",
        "route",
        "balanced",
        "backend",
        "tried",
        "upstream",
        "pending",
        "pending_size",
        "body_done",
        "body_sent",
        "head_sent",
        "response_started",
        "status",
        "bytes_sent",
        "bytes_received",
        "head_bytes",
        "started",
        "upstream_started",
        "finished",
        "_to_client",
        "_keep_alive",
        "_continue_sent",
        "_head",
        "_last_error",
        "_fresh_retry",
        "upgrade",
        "tunnel",
        "operator_cut",
        "filtered",
        "view",
        "source",
        "_replaced",
        "_complete",
        "sending",
        "waiting",
        "queued_at",
        "queue_time",
        "trace",
        "cache_status",
    )

    def __init__(
        self,
        core: "ProxyCore",
        client: "ClientConnection",
        request: RequestHead,
        request_id: bytes,
        client_ip: str,
    ) -> None:
        self.core = core
        self.client = client
        self.request = request
        self.request_id = request_id
        self.client_ip = client_ip
        self.route: Optional["Route"] = None
        self.balanced: Optional["BalancedGroup"] = None
        self.backend: Optional["Backend"] = None
        self.tried: List["Backend"] = []
        self.upstream: Optional["UpstreamConnection"] = None
        self.pending: List[bytes] = []
        self.pending_size = 0
        self.body_done = not request.has_body
        self.body_sent = False
        self.head_sent = False
        self.response_started = False
        self.status = 0
        self.bytes_sent = 0
        #: Request head and body bytes read from the client.
        self.bytes_received = request.raw_size + 4
        self.head_bytes = 0
        self.started = core.clock.seconds()
        self.upstream_started = 0.0
        self.finished = False
        self._to_client = _TO_CLIENT_NONE
        self._keep_alive = request.keep_alive
        self._continue_sent = False
        #: The client response head, held back to leave with the first body bytes.
        self._head = b""
        self._last_error = (502, "bad_gateway", "no backend could be reached")
        #: A stale pooled connection was already retried on a new one.
        self._fresh_retry = False
        #: The ``Upgrade`` value of a WebSocket handshake being relayed.
        upgrade = request.upgrade
        self.upgrade = upgrade if upgrade is not None and upgrade.lower() == b"websocket" else None
        #: Bytes are spliced both ways (after a 101).
        self.tunnel = False
        #: The backend connection was cut on purpose (admin ``disconnect``).
        self.operator_cut = False
        #: What the route's filters see of this request while their response
        #: hooks run (``None``: no filters, or their hooks are done).
        self.filtered: Optional[FilterRequest] = None
        #: The same, kept to the end (for the ``finished`` hook).
        self.view: Optional[FilterRequest] = None
        #: The shared response this request follows (coalescing), if any.
        self.source: Optional[SharedResponse] = None
        #: A filter answered instead of the backend's response head.
        self._replaced = False
        #: A backend's response was relayed whole.
        self._complete = False
        #: A local body being sent from a file (sendfile), if any.
        self.sending: Optional[SendFile] = None
        #: The backlog this request waits in for a backend slot, if any.
        self.waiting: Optional["Backlog"] = None
        #: Clock time it started waiting (-1: never queued); ``queue_time``
        #: is set to the seconds it waited once it leaves the queue.
        self.queued_at = -1.0
        #: W3C trace context ``(trace_id, span_id, trace_flags)``: the client's
        #: trace or a new one, this hop's span id (the parent id forwarded),
        #: the flags (:mod:`speedproxy.tracing.context`).  ``cache_status``
        #: is only set while tracing exports spans.
        self.trace = core.trace_ids.start(request)

    # -- choosing a backend ----------------------------------------------

    def start(self) -> None:
        """Route the request and start connecting to a backend."""
        request = self.request
        route = self.core.router.match(request.host, request.path)
        if route is None:
            self.fail(404, "no_route", "no route matches this request")
            return
        self.route = route
        if route.grpc is not None:  # a gRPC route: gRPC calls over HTTP/2 only (speedproxy.proxy.grpc_relay)
            self.fail(415, "grpc_only", "route '%s' takes only gRPC calls over HTTP/2" % route.name)
            return
        balanced = route.http
        if self.upgrade is not None:
            if route.websocket is not None:
                balanced = route.websocket
            else:
                self.upgrade = None  # the route does not allow WebSocket: a plain GET
        elif request.event_stream and route.sse is not None:
            balanced = route.sse
        self.balanced = balanced
        chain = route.filters
        if chain is None:
            self._connect()
            return
        self.filtered = self.view = filtered = FilterRequest(self, chain.body_filters)
        try:
            outcome = chain.request(filtered)
        except Exception:
            self._filter_failed(Failure())
            return
        if outcome is None:
            self._connect()
        elif isinstance(outcome, LocalResponse):
            self.respond_locally(outcome)
        elif isinstance(outcome, SharedResponse):
            self.source = outcome
            outcome.attach(self)
        else:
            outcome.addCallbacks(self._filtered_request, self._filter_failed)

    # -- filters -----------------------------------------------------------------

    def _filtered_request(self, outcome: "Optional[LocalResponse | SharedResponse]") -> None:
        """A request filter that answered later has decided."""
        if self.finished:
            return
        if outcome is None:
            self._connect()
        elif isinstance(outcome, SharedResponse):
            self.source = outcome
            outcome.attach(self)
        else:
            self.respond_locally(outcome)

    def go_to_backend(self) -> None:
        """The shared response this request waited for cannot serve it: ask a backend."""
        self.source = None
        if not self.finished and not self.response_started:
            self._connect()

    def shared_response_failed(self) -> None:
        """The shared response broke off after its head reached this client."""
        self.source = None
        if not self.finished:
            if self.committed:
                self._abort_client()
            else:
                self.fail(502, "bad_gateway", "the backend's response broke off")

    def _filter_failed(self, failure: Failure) -> None:
        """A filter raised: 500 for this request, logged; the worker goes on."""
        route = self.route
        _log.failure(
            "filter on route {route} failed (request {request_id})",
            failure,
            route=route.name if route is not None else "-",
            request_id=self.request_id.decode("ascii"),
        )
        if self.committed:
            self._release_backend(False)
            upstream = self.upstream
            self.upstream = None
            if upstream is not None:
                upstream.abort()
            self._abort_client()
        else:
            self.fail(500, "filter_error", "a filter of this route failed")

    def respond_locally(self, response: LocalResponse) -> None:
        """Answer with a filter's own response; no backend is asked."""
        if self.finished:
            return
        if self.waiting is not None:
            self._leave_queue()
        if self.view is not None:
            chain = self.route.filters  # type: ignore[union-attr]
            if chain is not None and chain.decorates:
                self._decorate(response)
        body = response.file
        if body is not None and self.request.method != b"HEAD" and self.client.plain:
            transport = self.client.transport
            if SendFile.possible(transport):
                self._send_file(response, body, transport)
                return
        self._write_local(response)
        self._finish()

    def _decorate(self, response: LocalResponse) -> None:
        """Show a local answer to the filters that add to every answer (CORS)."""
        view = self.view
        if view is None:
            return
        chain = self.route.filters  # type: ignore[union-attr]
        if chain is None or not chain.decorates:
            return
        try:
            chain.local_response(view, response)
        except Exception:
            _log.failure("filter on route {route} failed on a local answer", route=self.route.name)  # type: ignore[union-attr]

    def _send_file(self, response: LocalResponse, body: LocalBody, transport: Any) -> None:
        """Send a local response whose body is a file region with sendfile(2)."""
        if self.core.tracer is not None:
            self.cache_status = cache_status_of_local(response)
        head = self._local_head(response, True, body.length)
        self.head_bytes = len(head)
        self.bytes_sent = body.length
        client = self.client
        self.sending = SendFile(
            transport, head, body.fd, body.offset, body.length, body.keep, self._file_sent, client.body_blocked
        )
        self.sending.start()

    def _file_sent(self) -> None:
        self.sending = None
        if not self.finished:
            self._finish()

    def _answer_keep_alive(self) -> bool:
        """May the connection stay open after the answer this exchange sends now?"""
        keep_alive = self._keep_alive and self.body_done and not self.client.closing
        self._keep_alive = keep_alive
        return keep_alive

    def _local_head(self, response: LocalResponse, head_only: bool, length: Optional[int]) -> bytes:
        """Start a local answer: its head (and, unless ``head_only``, its body).

        (Every cache hit comes this way: ``local_response`` is called by
        position and the keep-alive decision made inline.)
        """
        status = response.status
        self.status = status
        self.response_started = True
        self._head = b""
        keep_alive = self._keep_alive and self.body_done and not self.client.closing
        self._keep_alive = keep_alive
        return local_response(
            status,
            response.reason,
            response.headers,
            response.body,
            self.request_id,
            self.core.server_tag,
            keep_alive,
            head_only,
            response.block,
            length,
        )

    def _write_local(self, response: LocalResponse) -> None:
        if self.core.tracer is not None:
            self.cache_status = cache_status_of_local(response)
        head_only = self.request.method == b"HEAD"
        length: Optional[int] = None
        file = response.file
        if file is not None:
            # No sendfile here (TLS, queued bytes, HEAD): copy the region.
            length = file.length
            if not head_only:
                response.body = os.pread(file.fd, file.length, file.offset)
            close = getattr(file.keep, "close", None)
            if close is not None:
                close()
            response.file = None
        data = self._local_head(response, head_only, length)
        self.head_bytes = len(data) - (0 if head_only else len(response.body))
        self.bytes_sent = 0 if head_only else len(response.body)
        self.client.write(data)

    def _connect(self) -> None:
        balanced = self.balanced
        if balanced.group.waiting and not self.tried:  # type: ignore[union-attr]
            self._wait_for_slot()  # behind the requests already waiting
            return
        backend = balanced.pick(self.client_ip, self.tried)  # type: ignore[union-attr]
        if backend is None:
            if self.tried:
                self.fail(*self._last_error)
            else:
                self._wait_for_slot()
            return
        self._use(backend)

    def _use(self, backend: "Backend") -> None:
        """Send the request to ``backend``."""
        self.backend = backend
        self.head_sent = False
        self.tried.append(backend)
        backend.request_started()
        self.balanced.group.retry_budget.deposit()  # type: ignore[union-attr]
        self.upstream_started = self.core.clock.seconds()
        self.core.pool.acquire(backend, self)

    def _release_backend(self, failed: bool) -> None:
        """Stop counting this exchange against its backend (idempotent).

        ``failed`` feeds the backend's passive health check.
        """
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.request_finished(failed)
            if failed:
                backend.record_failure(self.core.clock.seconds())
            group = backend.group
            if group is not None and group.waiting:
                group.backlog.slot_freed()  # type: ignore[union-attr]

    # -- waiting for a backend slot ------------------------------------------------

    def _wait_for_slot(self) -> None:
        """No backend can take the request now: queue it if one will, else 503."""
        balanced = self.balanced
        backlog = balanced.group.backlog  # type: ignore[union-attr]
        if backlog is None or not backlog.enabled or not balanced.can_wait():  # type: ignore[union-attr]
            self.fail(503, "no_backend_available", "no healthy backend can take the request")
        elif not backlog.enqueue(self):
            self.fail(
                503,
                "queue_full",
                "every backend is at max_conn and %d requests already wait (server.queue_size)" % backlog.size,
            )

    def queue_turn(self) -> bool:
        """First in the queue: take a free backend slot, or keep waiting (False)."""
        balanced = self.balanced
        backend = balanced.pick(self.client_ip)  # type: ignore[union-attr]
        if backend is None and balanced.can_wait():  # type: ignore[union-attr]
            return False
        self._leave_queue()
        if backend is None:
            # Every backend went down (or out) meanwhile.
            self.fail(503, "no_backend_available", "no healthy backend can take the request")
        else:
            self._use(backend)
        return True

    def queue_timed_out(self) -> None:
        """Waited ``server.queue_timeout`` without a backend slot."""
        backlog = self.waiting
        timeout = backlog.timeout if backlog is not None else 0.0
        self._leave_queue()
        self.fail(
            503,
            "queue_timeout",
            "every backend stayed at max_conn for %gs (server.queue_timeout)" % timeout,
        )

    def _leave_queue(self) -> None:
        backlog = self.waiting
        if backlog is not None:
            backlog.remove(self)
            self.queue_time = self.core.clock.seconds() - self.queued_at

    def _may_retry(self) -> bool:
        if self.response_started or self.finished:
            return False
        if len(self.tried) > self.core.retries:
            return False
        if self.tried and self.balanced is not None:
            if not self.balanced.group.retry_budget.try_spend(self.core.clock.seconds()):
                self._last_error = (
                    self._last_error[0], self._last_error[1], self._last_error[2] + " (retry budget exhausted)"
                )
                return False
        if self.body_sent:  # a streamed body cannot be replayed
            return False
        return not self.head_sent or self.request.method in IDEMPOTENT

    # -- events from the upstream side -------------------------------------

    def upstream_ready(self, connection: "UpstreamConnection", reused: bool) -> None:
        """A connection to the chosen backend is ready for this request."""
        if self.finished:
            self.core.pool.release(connection)
            return
        self.upstream = connection
        request = self.request
        connection.attach(self, request.method == b"HEAD")
        if self.client._write_paused:
            # The client still has not drained an earlier response.
            connection.pause_reading()
        if request.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif request.content_length is not None:
            framing = b"Content-Length: %d\r\n" % request.content_length
        else:
            framing = b""
        client = self.client
        target, headers, lowered = request.target, request.headers, request.lowered
        rules = self.balanced.group.rules  # type: ignore[union-attr]
        if rules is not None:  # credentials of the upstream (speedproxy.edge.upstream_credentials)
            target, headers, lowered = rules.outgoing(target, headers, lowered)
        head = upstream_request_head(
            request.method,
            target,
            headers,
            request.connection_tokens,
            peer=client.peer_ip,
            client_ip=self.client_ip,
            scheme=client.scheme,
            host=request.host,
            request_id=self.request_id,
            framing=framing,
            upgrade=self.upgrade,
            lowered=lowered,
            default_host=b"" if request.host else connection.backend.config.address.encode("ascii"),
            trace=self.trace,
            drop_tracestate=request.traceparent is None and request.tracestate is not None,
        )
        self.head_sent = True
        if self.pending:
            self.pending.insert(0, head)
            connection.write_sequence(self.pending)
            self.pending = []
            self.pending_size = 0
            self.body_sent = True
            client.resume_reading(client.PAUSED_CONNECTING)
        else:
            connection.write(head)
        if self.body_done:
            connection.arm_read_timeout()
        elif request.expect_continue and not self._continue_sent:
            self._continue_sent = True
            client.write(_CONTINUE)

    def upstream_connect_failed(self, reason: Failure, timed_out: bool) -> None:
        """Opening a connection to the backend failed."""
        if self.finished:
            return
        self._release_backend(True)
        if timed_out:
            self._last_error = (504, "gateway_timeout", "timed out connecting to the backend")
        else:
            self._last_error = (
                502, "bad_gateway", "could not connect to the backend: %s" % reason.getErrorMessage()
            )
        if self._may_retry():
            self._connect()
        else:
            self.fail(*self._last_error)

    def upstream_lost(self, reason: Failure, got_response: bool, reused: bool = False) -> None:
        """The backend connection closed before the response was complete."""
        self.upstream = None
        if self.finished:
            return
        backend = self.backend
        stale = reused and not got_response and not self.response_started
        self._release_backend(not stale and not self.operator_cut)
        self._last_error = (502, "bad_gateway", "the backend closed the connection without answering")
        if stale and backend is not None and not self._fresh_retry and self._may_retry():
            # A pooled keep-alive connection the backend had already closed:
            # try once more on a new connection to the same backend.
            self._fresh_retry = True
            self.backend = backend
            self.head_sent = False
            backend.request_started()
            self.core.pool.acquire(backend, self, fresh=True)
        elif not self.response_started and self._may_retry():
            self._connect()
        elif self.committed:
            self._abort_client()  # bytes of the answer reached the client: cut it
        elif self.response_started:
            # Only the head came, still held back: the client gets a clean 502.
            self.fail(502, "bad_gateway", "the backend closed the connection in the middle of its answer")
        else:
            self.fail(502, "bad_gateway", "the backend closed the connection without answering")

    def upstream_timed_out(self, got_response: bool) -> None:
        """The backend did not answer (or went quiet) within ``read_timeout``."""
        self.upstream = None
        if self.finished:
            return
        self._release_backend(True)
        if self.committed:
            self._abort_client()
        else:
            self.fail(504, "gateway_timeout", "the backend did not answer in time")

    def unexpected_response(self, detail: str) -> None:
        """The backend answered with a type its upstream must not send
        (:mod:`speedproxy.edge.response_validation`): a failure of that
        backend; another one is tried if the retry rules allow."""
        connection = self.upstream
        self.upstream = None
        if connection is not None:
            connection.abort()  # its body is never read, never relayed
        self._release_backend(True)
        self._last_error = (502, "bad_gateway", detail)
        if self._may_retry():
            self._connect()
        else:
            self.fail(*self._last_error)

    def upstream_bad_response(self, detail: str, got_response: bool) -> None:
        """The backend sent something that is not valid HTTP/1.1."""
        self.upstream = None
        if self.finished:
            return
        self._release_backend(True)
        if self.committed:
            self._abort_client()
        else:
            self.fail(502, "bad_gateway", detail)

    def response_head(self, response: ResponseHead, no_body: bool) -> None:
        """Send the backend's response head on to the client."""
        if self.backend is not None:
            rules = self.balanced.group.rules  # type: ignore[union-attr]
            if rules is not None and rules.rejects(response):
                self.unexpected_response(rules.expect.reason(response))
                return
        filtered = self.filtered
        if filtered is not None:
            chain = self.route.filters  # type: ignore[union-attr]
            try:
                # (No view of the head is made when no filter looks at heads.)
                replacement = (
                    chain.response_head(filtered, FilterResponse(response))  # type: ignore[union-attr]
                    if chain.sees_heads  # type: ignore[union-attr]
                    else None
                )
            except Exception:
                self._filter_failed(Failure())
                return
            if replacement is not None:
                # A filter answers instead; the backend's body still goes
                # through the body hooks (a cache fill), then is dropped.
                self._replaced = True
                self.response_started = True
                if self.backend is not None:
                    self.backend.record_response_time(self.core.clock.seconds() - self.upstream_started)
                self._decorate(replacement)
                self._write_local(replacement)
                return
            if chain.rewrites_body and response.content_length is not None and not no_body:  # type: ignore[union-attr]
                response.content_length = None  # the body may change: chunked
            if self.core.tracer is not None:
                self.cache_status = header_value(response.headers, response.lowered, b"cache-status")
        self.response_started = True
        self.status = response.status
        backend = self.backend
        if backend is not None:
            now = self.core.clock.seconds()
            backend.record_response_time(now - self.upstream_started)
            if response.status >= 500:
                backend.record_5xx(now)
            elif backend.consecutive_failures:
                backend.consecutive_failures = 0  # passive health: it answers
            if response.speedproxy is not None:  # a nested speedproxy
                backend.saw_speedproxy(response.speedproxy.decode("latin-1"), now)
        if response.streaming or self.request.event_stream:
            # Server-sent events: no read timeout while events keep coming,
            # only the stream's own idle timeout.
            upstream = self.upstream
            if upstream is not None:
                upstream.read_timeout = self.core.server.sse_idle_timeout
                upstream.arm_read_timeout()
        client = self.client
        keep_alive = self._keep_alive and self.body_done and not client.closing
        if no_body:
            self._to_client = _TO_CLIENT_NONE
            framing = (
                b"Content-Length: %d\r\n" % response.content_length
                if response.content_length is not None
                else b""
            )
        elif response.content_length is not None:
            self._to_client = _TO_CLIENT_RAW
            framing = b"Content-Length: %d\r\n" % response.content_length
        elif self.request.version == b"HTTP/1.1":
            self._to_client = _TO_CLIENT_CHUNKED
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            self._to_client = _TO_CLIENT_RAW
            framing = b""
            keep_alive = False
        self._keep_alive = keep_alive
        self._head = client_response_head(
                b"HTTP/1.1",
                response.status,
                response.reason,
                response.headers,
                response.connection_tokens,
                request_id=self.request_id,
                server_tag=self.core.server_tag,
                framing=framing,
                keep_alive=keep_alive,
                lowered=response.lowered,
            )
        self.head_bytes = len(self._head)

    def response_body(self, data: bytes) -> None:
        """Relay one piece of response body."""
        filtered = self.filtered
        if filtered is not None and filtered.body_filters:
            try:
                data = self.route.filters.response_body(filtered, data)  # type: ignore[union-attr]
            except Exception:
                self._filter_failed(Failure())
                return
            if self._replaced:
                return
        size = len(data)
        if not size:
            return
        self.bytes_sent += size
        head = self._head
        if self._to_client == _TO_CLIENT_CHUNKED:
            if head:
                self._head = b""
                self.client.write_sequence((head, b"%x\r\n" % size, data, b"\r\n"))
            else:
                self.client.write_sequence((b"%x\r\n" % size, data, b"\r\n"))
        elif head:
            self._head = b""
            self.client.write_sequence((head, data))
        else:
            self.client.write(data)

    def splice_sink(self) -> Optional[object]:
        """The client transport, if the rest of this body may be spliced into it.

        Sends a held-back response head first; refuses (``None``) unless the
        client is a plain TCP connection with nothing queued, so spliced
        bytes can never overtake bytes written before them.
        """
        if self._to_client != _TO_CLIENT_RAW or self.finished:
            return None
        filtered = self.filtered
        if filtered is not None and (self._replaced or filtered.body_filters):
            return None
        client = self.client
        if not client.plain or client._write_paused:
            return None
        head = self._head
        if head:
            self._head = b""
            client.write(head)
        transport = client.transport
        if not nothing_queued(transport):
            return None
        return transport

    def response_done(self, reusable: bool) -> None:
        """The whole response has been relayed."""
        filtered = self.filtered
        chunked = self._to_client == _TO_CLIENT_CHUNKED
        if filtered is not None and filtered.body_filters:
            try:
                tail = self.route.filters.response_end(filtered)  # type: ignore[union-attr]
            except Exception:
                self._filter_failed(Failure())
                return
            self.filtered = None  # the body filters are done: relay the tail as is
            if tail and not self._replaced:
                if chunked:
                    # (A compressor's tail, often the whole body: with the last
                    # chunk and a held-back head in one write, one send.  With
                    # the head still held back, the tail is the whole body: on a
                    # chain that asks for it, it goes out with its length.)
                    self.bytes_sent += len(tail)
                    head, self._head = self._head, b""
                    sizes = head and self.route.filters.sizes_tail  # type: ignore[union-attr]
                    sized = sized_head(head, len(tail)) if sizes else None
                    if sized is not None:
                        self.head_bytes = len(sized)
                        self.client.write_sequence((sized, tail))
                    else:
                        self.client.write_sequence((head, b"%x\r\n" % len(tail), tail, _TAIL_END))
                    chunked = False  # (the last chunk is sent)
                else:
                    self.response_body(tail)
        self._complete = True
        connection = self.upstream
        self.upstream = None
        head = self._head
        if chunked:
            self.client.write(head + LAST_CHUNK if head else LAST_CHUNK)
        elif head:
            self.client.write(head)
        self._head = b""
        self._release_backend(False)
        if connection is not None:
            if reusable and self.body_done:
                self.core.pool.release(connection)
            else:
                connection.abort()
        self._finish()

    def cut_by_operator(self) -> None:
        """Drop the backend connection on an operator's order."""
        self.operator_cut = True
        upstream = self.upstream
        if upstream is not None:
            upstream.cut()

    # -- WebSocket tunnel --------------------------------------------------------

    def upgraded(self, response: ResponseHead) -> None:
        """The backend switched protocols: relay the 101, then splice bytes."""
        self.response_started = True
        self.status = 101
        self.tunnel = True
        backend = self.backend
        if backend is not None:
            backend.record_response_time(self.core.clock.seconds() - self.upstream_started)
            backend.record_success()
        head = client_response_head(
            b"HTTP/1.1",
            101,
            response.reason,
            response.headers,
            response.connection_tokens,
            request_id=self.request_id,
            server_tag=self.core.server_tag,
            framing=b"Connection: Upgrade\r\nUpgrade: %s\r\n" % (response.upgrade or self.upgrade),
            keep_alive=True,
        )
        self.head_bytes = len(head)
        self.client.write(head)
        self.client.enter_tunnel(self)

    def tunnel_from_upstream(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        client = self.client
        client.deadline = self.core.clock.seconds() + self.core.server.websocket_idle_timeout
        client.write(data)

    def tunnel_from_client(self, data: bytes) -> None:
        self.bytes_received += len(data)
        upstream = self.upstream
        if upstream is not None:
            self.client.deadline = self.core.clock.seconds() + self.core.server.websocket_idle_timeout
            upstream.write(data)

    def tunnel_closed(self, from_upstream: bool) -> None:
        """One side of the tunnel closed: close the other once it is flushed."""
        if self.finished:
            return
        self.finished = True
        connection = self.upstream
        self.upstream = None
        if connection is not None and not from_upstream:
            connection.exchange = None
            connection.transport.loseConnection()
        self._release_backend(False)
        self.core.log_exchange(self, 101)
        if self.view is not None:
            self._filters_finished()  # a connection limit counted this tunnel until now
        self.client.exchange_finished(self, False)

    # -- events from the client side ---------------------------------------

    def request_body(self, data: bytes) -> None:
        """Relay one piece of request body (already de-framed)."""
        self.bytes_received += len(data)
        if self.request.chunked:
            frame = b"%x\r\n%b\r\n" % (len(data), data)
        else:
            frame = data
        upstream = self.upstream
        if upstream is not None:
            self.body_sent = True
            upstream.write(frame)
        elif not self.finished:
            self.pending.append(frame)
            self.pending_size += len(frame)
            if self.pending_size > PENDING_LIMIT:
                self.client.pause_reading(self.client.PAUSED_CONNECTING)

    def request_body_done(self) -> None:
        """The client finished sending the request body."""
        self.body_done = True
        if self.finished:
            return
        upstream = self.upstream
        if self.request.chunked:
            if upstream is not None:
                upstream.write(LAST_CHUNK)
            else:
                self.pending.append(LAST_CHUNK)
        if upstream is not None:
            upstream.arm_read_timeout()

    def client_lost(self) -> None:
        """The client went away: drop the backend connection, never reuse it."""
        if self.finished:
            return
        if self.tunnel:
            self.tunnel_closed(from_upstream=False)
            return
        self.finished = True
        if self.waiting is not None:
            self._leave_queue()
        sending = self.sending
        if sending is not None:
            self.sending = None
            sending.cancel()
        connection = self.upstream
        self.upstream = None
        if connection is not None:
            connection.abort()
        self._release_backend(False)
        self.core.log_exchange(self, 499)
        self._filters_finished()

    def _filters_finished(self) -> None:
        """Tell the filters (and a shared response) that this request is over."""
        source = self.source
        if source is not None:
            self.source = None
            source.detach(self)
        view = self.view
        if view is not None:
            # The views point back at this exchange: dropping them here frees
            # it by reference counting, not by a cyclic garbage collection.
            self.view = self.filtered = None
            chain = self.route.filters  # type: ignore[union-attr]
            if not chain.finishes:  # type: ignore[union-attr]
                return
            try:
                chain.finished(view, self._complete)  # type: ignore[union-attr]
            except Exception:
                _log.failure("filter on route {route} failed when the request ended", route=self.route.name)  # type: ignore[union-attr]

    # -- ending ------------------------------------------------------------

    def fail(self, status: int, code: str, detail: str) -> None:
        """Answer with a JSON error, or cut the client off if too late for one."""
        if self.finished:
            return
        if self.waiting is not None:
            self._leave_queue()
        connection = self.upstream
        if connection is not None:
            # The request is abandoned (bad body, timeout): never let the
            # backend's answer reach the client or the connection be reused.
            self.upstream = None
            connection.abort()
        self._release_backend(False)
        if self.committed:
            self._abort_client()
            return
        filtered = self.filtered
        if filtered is not None and status >= 500 and not self._replaced:
            try:
                replacement = self.route.filters.error(filtered, status)  # type: ignore[union-attr]
            except Exception:
                _log.failure("filter on route {route} failed on an error", route=self.route.name)  # type: ignore[union-attr]
                replacement = None
            if replacement is not None:  # e.g. a stale response (stale-if-error)
                self._head = b""
                self._decorate(replacement)
                self._write_local(replacement)
                self._finish()
                return
        self._head = b""  # a held-back backend head is replaced by the error
        self.head_bytes = 0  # ...and its size with it: send_error counts the whole error
        self.status = status
        self.response_started = True
        keep_alive = self._answer_keep_alive()
        view = self.view
        self.bytes_sent = self.client.send_error(
            status,
            code,
            detail,
            self.request_id,
            keep_alive,
            self.request.method == b"HEAD",
            view.error_headers if view is not None else b"",
        )
        self._finish()

    @property
    def committed(self) -> bool:
        """Have response bytes reached the client (too late for an error)?"""
        return self.response_started and not self._head

    def _abort_client(self) -> None:
        self._keep_alive = False
        self.finished = True
        self.core.log_exchange(self, self.status)
        if self.view is not None or self.source is not None:
            self._filters_finished()
        self.client.exchange_finished(self, False, abort=True)

    def _finish(self) -> None:
        self.finished = True
        self.core.log_exchange(self, self.status)
        if self.view is not None or self.source is not None:
            self._filters_finished()
        self.client.exchange_finished(self, self._keep_alive)
