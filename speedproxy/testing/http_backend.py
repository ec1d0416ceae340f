"""A threaded HTTP/1.1 origin that records requests; its answers are pluggable behaviours."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from speedproxy.testing.support import DEFAULT_TIMEOUT, pattern_chunks, wait_until


@dataclass
class BackendRequest:
    """One request as a test backend received it."""

    method: str
    path: str
    version: str
    headers: List[Tuple[str, str]]
    body_sha256: str
    body_length: int
    chunked: bool
    #: Serial number of the TCP connection it came on (1, 2, ...).
    connection: int
    client_address: Tuple[str, int]

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def header_names(self) -> List[str]:
        """Lower-cased names of every header received."""
        return [key.lower() for key, _ in self.headers]


class BackendExchange:
    """What a behaviour gets: the recorded request and ways to answer it."""

    def __init__(self, backend: "HTTPBackend", handler: "_Handler", request: BackendRequest) -> None:
        self.backend = backend
        self.handler = handler
        self.request = request

    @property
    def stopping(self) -> threading.Event:
        """Set when the backend is being stopped: long waits must watch it."""
        return self.backend.stopping

    def write(self, data: bytes) -> None:
        """Write raw bytes to the connection."""
        self.handler.wfile.write(data)
        self.handler.wfile.flush()

    def send_head(
        self,
        status: int = 200,
        headers: Sequence[Tuple[str, str]] = (),
        reason: Optional[str] = None,
        body: bytes = b"",
    ) -> None:
        """Write a status line and headers (framing headers are the caller's).

        ``body`` bytes, if given, leave in the same write as the head.
        """
        phrase = reason if reason is not None else http.server.BaseHTTPRequestHandler.responses.get(status, ("OK",))[0]
        lines = [f"HTTP/1.1 {status} {phrase}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        lines.append("\r\n")
        self.write("".join(lines).encode("latin-1") + body)

    def send(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: Sequence[Tuple[str, str]] = (),
        content_type: str = "text/plain",
    ) -> None:
        """Answer with a whole Content-Length framed response."""
        all_headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))] + list(headers)
        self.send_head(status, all_headers, body=b"" if self.request.method == "HEAD" else body)

    def send_json(self, value: Any, status: int = 200, headers: Sequence[Tuple[str, str]] = ()) -> None:
        self.send(status, json.dumps(value).encode("utf-8"), headers, "application/json")

    def close(self) -> None:
        """Close this connection after the behaviour returns (or abruptly now)."""
        self.handler.close_connection = True

    def abort(self) -> None:
        """Close the TCP connection at once (RST if possible)."""
        self.handler.close_connection = True
        sock = self.handler.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


#: A backend behaviour: answers one request.
Behaviour = Callable[[BackendExchange], None]


def echo(status: int = 200, headers: Sequence[Tuple[str, str]] = ()) -> Behaviour:
    """Answer with JSON describing the request (method, path, headers, body digest)."""

    def behaviour(exchange: BackendExchange) -> None:
        request = exchange.request
        exchange.send_json(
            {
                "method": request.method,
                "path": request.path,
                "headers": request.headers,
                "body_sha256": request.body_sha256,
                "body_length": request.body_length,
                "connection": request.connection,
                "backend": exchange.backend.name,
            },
            status,
            headers,
        )

    return behaviour


def fixed_body(size: int, chunked: bool = False, content_type: str = "application/octet-stream") -> Behaviour:
    """Answer with ``size`` bytes of :func:`pattern_chunks` (streamed, not held)."""

    def behaviour(exchange: BackendExchange) -> None:
        if chunked:
            exchange.send_head(200, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")])
        else:
            exchange.send_head(200, [("Content-Type", content_type), ("Content-Length", str(size))])
        if exchange.request.method == "HEAD":
            return
        for piece in pattern_chunks(size):
            if exchange.stopping.is_set():
                exchange.abort()
                return
            exchange.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            exchange.write(b"0\r\n\r\n")

    return behaviour


def streaming(pieces: Callable[[], Iterable[bytes]], content_type: str = "text/plain") -> Behaviour:
    """Answer chunked, one chunk per item of ``pieces()``, written as it comes.

    ``pieces`` is called per request; it may block between items (on a
    :class:`threading.Event` the test sets), which is how a test controls
    pacing.  Blocking must be bounded.
    """

    def behaviour(exchange: BackendExchange) -> None:
        exchange.send_head(200, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")])
        for piece in pieces():
            if piece:
                exchange.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        exchange.write(b"0\r\n\r\n")

    return behaviour


def paced(
    pieces: Sequence[bytes],
    gates: Sequence[Optional[threading.Event]],
    timeout: float = DEFAULT_TIMEOUT,
) -> Behaviour:
    """Answer chunked with ``pieces``; piece ``i`` waits for ``gates[i]`` first.

    A ``None`` gate sends at once.  Each wait is bounded by ``timeout``; the
    names of gates that timed out are appended to ``HTTPBackend.errors``.
    """

    def generate_for(exchange: BackendExchange) -> Callable[[], Iterable[bytes]]:
        def generate() -> Iterator[bytes]:
            for index, piece in enumerate(pieces):
                gate = gates[index] if index < len(gates) else None
                if gate is not None and not gate.wait(timeout):
                    exchange.backend.errors.append(f"gate {index} not set within {timeout}s")
                yield piece

        return generate

    def behaviour(exchange: BackendExchange) -> None:
        streaming(generate_for(exchange))(exchange)

    return behaviour


def upload_digest() -> Behaviour:
    """Answer with JSON ``{"sha256": ..., "length": ...}`` of the request body."""

    def behaviour(exchange: BackendExchange) -> None:
        request = exchange.request
        exchange.send_json({"sha256": request.body_sha256, "length": request.body_length, "chunked": request.chunked})

    return behaviour


def stall() -> Behaviour:
    """Read the request and never answer (until the backend stops)."""

    def behaviour(exchange: BackendExchange) -> None:
        exchange.backend._note_stalled()
        exchange.stopping.wait()
        exchange.close()

    return behaviour


def close_mid_response(total: int = 1 << 20, sent: int = 64 * 1024) -> Behaviour:
    """Promise ``total`` bytes with Content-Length, send ``sent``, then close."""

    def behaviour(exchange: BackendExchange) -> None:
        exchange.send_head(200, [("Content-Type", "application/octet-stream"), ("Content-Length", str(total))])
        for piece in pattern_chunks(sent):
            exchange.write(piece)
        exchange.close()
        exchange.abort()

    return behaviour


def delayed(seconds: float, then: Optional[Behaviour] = None) -> Behaviour:
    """Wait ``seconds`` (cut short if the backend stops), then behave as ``then``."""
    inner = then if then is not None else echo()

    def behaviour(exchange: BackendExchange) -> None:
        exchange.stopping.wait(seconds)
        inner(exchange)

    return behaviour


def raw_response(data: bytes, close: bool = True) -> Behaviour:
    """Write ``data`` verbatim as the answer (malformed answers)."""

    def behaviour(exchange: BackendExchange) -> None:
        exchange.write(data)
        if close:
            exchange.close()

    return behaviour


class _Handler(http.server.BaseHTTPRequestHandler):
    """Request handler of :class:`HTTPBackend`; one instance per connection."""

    protocol_version = "HTTP/1.1"
    server: "_Server"
    #: Bounds every blocking read; a stalled peer never blocks a thread forever.
    timeout = 30

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.connection_number = self.server.backend._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.backend._connection_closed(self.connection, self.connection_number)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def handle_expect_100(self) -> bool:
        self.server.backend.expect_continue_seen += 1
        return super().handle_expect_100()

    def _read_body(self) -> Tuple[str, int, bool]:
        """Consume the request body streaming; return (sha256, length, chunked)."""
        digest = hashlib.sha256()
        length = 0
        encoding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        if encoding == "chunked":
            while True:
                line = self.rfile.readline(4096)
                if not line.endswith(b"\r\n"):
                    raise ValueError("malformed chunk size line")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:  # trailers
                        trailer = self.rfile.readline(4096)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    break
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, 256 * 1024))
                    if not data:
                        raise ValueError("body cut short")
                    digest.update(data)
                    remaining -= len(data)
                    length += len(data)
                if self.rfile.read(2) != b"\r\n":
                    raise ValueError("missing CRLF after chunk")
            return digest.hexdigest(), length, True
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining:
            data = self.rfile.read(min(remaining, 256 * 1024))
            if not data:
                raise ValueError("body cut short")
            digest.update(data)
            remaining -= len(data)
            length += len(data)
        return digest.hexdigest(), length, False

    def _serve(self) -> None:
        backend = self.server.backend
        backend._record_head(self.command, self.path, self.connection_number)
        digest, length, chunked = self._read_body()
        request = BackendRequest(
            method=self.command,
            path=self.path,
            version=self.request_version,
            headers=list(self.headers.items()),
            body_sha256=digest,
            body_length=length,
            chunked=chunked,
            connection=self.connection_number,
            client_address=tuple(self.client_address[:2]),  # type: ignore[arg-type]
        )
        backend._record(request)
        behaviour = backend.behaviour_for(request.path)
        behaviour(BackendExchange(backend, self, request))
        if self.request_version != "HTTP/1.1" and (self.headers.get("Connection") or "").lower() != "keep-alive":
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    backend: "HTTPBackend"

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.backend.errors.append(repr(sys.exc_info()[1]))


class HTTPBackend:
    """A threaded HTTP/1.1 origin on 127.0.0.1 for integration tests.

    Every request is recorded (:attr:`requests`) after its body has been read
    streaming and hashed; distinct TCP connections are counted
    (:attr:`connections_opened`, :attr:`connections_closed`).  The answer is
    chosen by the longest matching path prefix among :meth:`route`-registered
    behaviours, else :attr:`behaviour` (default :func:`echo`).
    """

    def __init__(self, behaviour: Optional[Behaviour] = None, name: str = "backend", host: str = "127.0.0.1") -> None:
        self.name = name
        self.behaviour: Behaviour = behaviour if behaviour is not None else echo()
        self.routes: Dict[str, Behaviour] = {}
        self.host = host
        self.port = 0
        self.requests: List[BackendRequest] = []
        #: ``(method, path)`` of every request head, recorded before its body is read.
        self.heads: List[Tuple[str, str]] = []
        #: The connection serial number of each entry of :attr:`heads`.
        self.head_connections: List[int] = []
        #: Serial numbers of the connections that have closed.
        self.closed_connections: List[int] = []
        self.errors: List[str] = []
        self.connections_opened = 0
        self.connections_closed = 0
        self.expect_continue_seen = 0
        self.stalled = 0
        self.stopping = threading.Event()
        self._condition = threading.Condition()
        self._sockets: Dict[int, socket.socket] = {}
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    # -- configuration -------------------------------------------------------

    def route(self, prefix: str, behaviour: Behaviour) -> "HTTPBackend":
        """Answer requests whose path starts with ``prefix`` with ``behaviour``."""
        self.routes[prefix] = behaviour
        return self

    def behaviour_for(self, path: str) -> Behaviour:
        best = ""
        for prefix in self.routes:
            if path.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return self.routes[best] if best else self.behaviour

    # -- life cycle ------------------------------------------------------------

    def start(self) -> "HTTPBackend":
        """Bind a free port and serve in a daemon thread."""
        server = _Server((self.host, 0), _Handler)
        server.backend = self
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"{self.name}-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, wake stalled behaviours and close open connections."""
        self.stopping.set()
        server = self._server
        if server is None:
            return
        self._server = None
        server.shutdown()
        server.server_close()
        with self._condition:
            sockets = list(self._sockets.values())
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
        wait_until(lambda: not self._sockets, timeout, "backend connections to close")

    def __enter__(self) -> "HTTPBackend":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- bookkeeping (called from handler threads) --------------------------

    def _connection_opened(self, sock: socket.socket) -> int:
        with self._condition:
            self.connections_opened += 1
            number = self.connections_opened
            self._sockets[id(sock)] = sock
            self._condition.notify_all()
            return number

    def _connection_closed(self, sock: socket.socket, number: int) -> None:
        with self._condition:
            self.connections_closed += 1
            self.closed_connections.append(number)
            self._sockets.pop(id(sock), None)
            self._condition.notify_all()

    def _record_head(self, method: str, path: str, connection: int) -> None:
        with self._condition:
            self.heads.append((method, path))
            self.head_connections.append(connection)
            self._condition.notify_all()

    def _record(self, request: BackendRequest) -> None:
        with self._condition:
            self.requests.append(request)
            self._condition.notify_all()

    def _note_stalled(self) -> None:
        with self._condition:
            self.stalled += 1
            self._condition.notify_all()

    # -- waiting -------------------------------------------------------------

    def wait_for(self, predicate: Callable[["HTTPBackend"], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "condition") -> Any:
        """Block (bounded) until ``predicate(self)`` is truthy; return its value."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"backend {self.name}: timed out after {timeout}s waiting for {what}")
                self._condition.wait(min(left, 0.1))

    def wait_for_requests(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> List[BackendRequest]:
        """Wait until ``count`` requests were recorded; return them all."""
        self.wait_for(lambda b: len(b.requests) >= count, timeout, f"{count} requests")
        return list(self.requests)

    @property
    def open_connections(self) -> int:
        with self._condition:
            return len(self._sockets)

    def reset(self) -> None:
        """Forget recorded requests and counters (connections stay open)."""
        with self._condition:
            self.requests.clear()
            self.heads.clear()
            self.head_connections.clear()
            self.errors.clear()
            self.expect_continue_seen = 0
            self.stalled = 0

    @property
    def last_request(self) -> BackendRequest:
        with self._condition:
            if not self.requests:
                raise AssertionError(f"backend {self.name} received no request")
            return self.requests[-1]
