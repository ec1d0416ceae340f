"""Raw sockets: a backend that hands each connection to the test, and a byte-exact HTTP/1.1 client."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

from speedproxy.testing.support import DEFAULT_TIMEOUT


RawHandler = Callable[[socket.socket, threading.Event], None]


class RawBackend:
    """A TCP server on 127.0.0.1 handing each connection to ``handler(sock, stopping)``.

    The handler runs in its own thread and owns the socket (it is closed
    after the handler returns).  ``stopping`` is set on :meth:`stop`; handlers
    that wait must watch it.
    """

    def __init__(self, handler: RawHandler, name: str = "raw", host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.name = name
        self.host = host
        self.port = 0
        self.connections = 0
        self.received: List[bytes] = []
        self.errors: List[str] = []
        self.stopping = threading.Event()
        self._listener: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._workers: List[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> "RawBackend":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name=f"{self.name}-{self.port}", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self.stopping.is_set():
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            worker = threading.Thread(target=self._run, args=(sock,), daemon=True)
            self._workers.append(worker)
            worker.start()

    def _run(self, sock: socket.socket) -> None:
        sock.settimeout(10.0)
        try:
            self.handler(sock, self.stopping)
        except Exception as error:  # recorded for the test to inspect
            self.errors.append(repr(error))
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for worker in self._workers:
            worker.join(timeout)

    def __enter__(self) -> "RawBackend":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def read_request_head(sock: socket.socket, limit: int = 65536) -> bytes:
    """Read from ``sock`` up to and including the blank line ending a request head."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(4096)
        if not piece:
            break
        data += piece
        if len(data) > limit:
            break
    return data


# -- raw client ----------------------------------------------------------------------


@dataclass
class RawResponse:
    """A response read by :class:`RawClient`."""

    version: str
    status: int
    reason: str
    headers: List[Tuple[str, str]]
    body: bytes = b""
    #: Interim (1xx) responses seen before this one, as status codes.
    interim: List[int] = field(default_factory=list)
    #: ``True`` when the body ended early because the connection closed.
    truncated: bool = False

    def header(self, name: str) -> Optional[str]:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def header_list(self, name: str) -> List[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


class RawClient:
    """One TCP connection to the proxy and a strict, buffered response reader."""

    def __init__(self, host: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buffer = b""
        self.closed_by_peer = False

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def settimeout(self, timeout: Optional[float]) -> None:
        self.sock.settimeout(timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        headers: Sequence[Tuple[str, str]] = (),
        body: bytes = b"",
        host: Optional[str] = "test.local",
    ) -> None:
        """Send a simple request (Content-Length framed if it has a body)."""
        lines = [f"{method} {path} HTTP/1.1\r\n"]
        if host is not None:
            lines.append(f"Host: {host}\r\n")
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}\r\n")
        lines.append("\r\n")
        self.send("".join(lines).encode("latin-1") + body)

    # -- reading --------------------------------------------------------------

    def _fill(self) -> bool:
        try:
            data = self.sock.recv(256 * 1024)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed_by_peer = True
            return False
        self._buffer += data
        return True

    def _read_line(self) -> bytes:
        while True:
            index = self._buffer.find(b"\r\n")
            if index >= 0:
                line = self._buffer[:index]
                self._buffer = self._buffer[index + 2 :]
                return line
            if not self._fill():
                raise ConnectionError(f"connection closed while reading a line; got {self._buffer[:200]!r}")

    def _read_exact(self, size: int) -> Tuple[bytes, bool]:
        while len(self._buffer) < size:
            if not self._fill():
                data, self._buffer = self._buffer, b""
                return data, True
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data, False

    def read_head(self) -> RawResponse:
        """Read one status line and header block (may be a 1xx)."""
        line = self._read_line()
        version, _, rest = line.decode("latin-1").partition(" ")
        status, _, reason = rest.partition(" ")
        headers = []
        while True:
            header = self._read_line()
            if not header:
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers.append((name, value.strip()))
        return RawResponse(version, int(status), reason, headers)

    def _read_exactly_into(self, size: int, sink: Callable[[bytes], None]) -> bool:
        """Pass the next ``size`` bytes to ``sink``; False if the peer closed first."""
        remaining = size
        while remaining:
            if not self._buffer and not self._fill():
                return False
            take = self._buffer[:remaining]
            self._buffer = self._buffer[len(take) :]
            remaining -= len(take)
            sink(take)
        return True

    def read_response(self, head_only: bool = False, body_sink: Optional[Callable[[bytes], None]] = None) -> RawResponse:
        """Read one whole final response, skipping (and noting) interim ones.

        With ``body_sink`` the body is passed to it piece by piece instead of
        being kept in :attr:`RawResponse.body`.
        """
        interim = []
        while True:
            response = self.read_head()
            if 100 <= response.status < 200 and response.status != 101:
                interim.append(response.status)
                continue
            break
        response.interim = interim
        if head_only or response.status in (204, 304):
            return response
        pieces: List[bytes] = []
        sink = body_sink if body_sink is not None else pieces.append
        encoding = (response.header("Transfer-Encoding") or "").lower()
        length = response.header("Content-Length")
        if encoding == "chunked":
            while True:
                size_line = self._read_line()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while self._read_line():
                        pass
                    break
                if not self._read_exactly_into(size, sink):
                    response.truncated = True
                    break
                if self._read_line() != b"":
                    raise ValueError("chunk data longer than its size")
        elif length is not None:
            if not self._read_exactly_into(int(length), sink):
                response.truncated = True
        else:
            while True:
                if self._buffer:
                    sink(self._buffer)
                    self._buffer = b""
                if not self._fill():
                    break
        if body_sink is None:
            response.body = b"".join(pieces)
        return response

    def read_chunk(self) -> bytes:
        """Read the next chunk of a chunked body (after :meth:`read_head`); ``b""`` at its end."""
        size = int(self._read_line().split(b";")[0], 16)
        if size == 0:
            while self._read_line():
                pass
            return b""
        data, truncated = self._read_exact(size)
        if truncated:
            raise ConnectionError("connection closed inside a chunk")
        if self._read_line() != b"":
            raise ValueError("chunk data longer than its size")
        return data

    def recv_some(self, limit: int = 256 * 1024) -> bytes:
        """Buffered bytes if any, else one ``recv`` (``b""`` when the peer closed)."""
        if self._buffer:
            data, self._buffer = self._buffer[:limit], self._buffer[limit:]
            return data
        try:
            data = self.sock.recv(limit)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed_by_peer = True
        return data

    def read_available(self, timeout: float = 0.2) -> bytes:
        """Whatever arrives within ``timeout`` (buffered bytes first)."""
        previous = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            while True:
                try:
                    if not self._fill():
                        break
                except socket.timeout:
                    break
        finally:
            self.sock.settimeout(previous)
        data, self._buffer = self._buffer, b""
        return data

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Read until the peer closes (bounded); return the bytes received meanwhile.

        :raises TimeoutError: if the connection is still open after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        previous = self.sock.gettimeout()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"connection still open after {timeout}s")
                self.sock.settimeout(left)
                try:
                    if not self._fill():
                        break
                except socket.timeout:
                    raise TimeoutError(f"connection still open after {timeout}s") from None
        finally:
            self.sock.settimeout(previous)
        data, self._buffer = self._buffer, b""
        return data
