"""Helpers of the HTTP/2 end-to-end tests (``test_e2e_http2.py``).

* :func:`ensure_h2load` installs Debian's nghttp2-client when h2load is missing.
* :func:`curl` runs curl and returns its status line, HTTP version and body.
* :class:`H2Socket` is an HTTP/2 client on a real socket (the h2 library,
  client side) that can also send whatever frames an attacker would.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, ResponseReceived, StreamEnded, StreamReset
from h2.exceptions import H2Error

from debian_support import ensure_program


def _ensure(binary: str, package: str) -> str:
    """``binary``'s path, installing Debian's ``package`` if it is missing (as root)."""
    return ensure_program(binary, package, "the HTTP/2 end-to-end tests")


def ensure_h2load() -> str:
    """The h2load binary (Debian's ``nghttp2-client``), installed if missing."""
    return _ensure("h2load", "nghttp2-client")


def ensure_curl() -> str:
    """The curl binary (with HTTP/2: Debian's is built with nghttp2), installed if missing."""
    return _ensure("curl", "curl")


@dataclass
class CurlResult:
    status: int
    version: str
    body: bytes
    headers: Dict[str, str] = field(default_factory=dict)


def curl(url: str, *options: str, timeout: float = 20.0) -> CurlResult:
    """One curl request (``options`` such as ``--http2``); the status, HTTP version and body."""
    marker = "\n--curl-%{http_code}-%{http_version}--"
    done = subprocess.run(
        [ensure_curl(), "-sS", "--max-time", str(timeout), "-D", "-", "-w", marker, *options, url],
        capture_output=True,
        timeout=timeout + 10,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    out = done.stdout
    cut = out.rindex(b"\n--curl-")
    status, version = out[cut + 8 : -2].decode().split("-", 1)
    head, _, body = out[:cut].partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return CurlResult(int(status), version, body, headers)


class H2Socket:
    """An HTTP/2 connection to the proxy from this test, frame by frame if need be."""

    def __init__(self, port: int, ca: Optional[Path] = None, settings: Optional[Dict[int, int]] = None) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if ca is not None:
            context = ssl.create_default_context(cafile=str(ca))
            context.set_alpn_protocols(["h2"])
            raw = context.wrap_socket(raw, server_hostname="localhost")
            assert raw.selected_alpn_protocol() == "h2"
        self.sock = raw
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.events: List[Any] = []
        self.closed = False
        #: Give response DATA back to the window as it comes (a client that reads).
        self.acking = True
        self.flush()

    def flush(self) -> None:
        self.send_raw(self.h2.data_to_send())

    def send_raw(self, data: bytes) -> bool:
        """Send bytes; False if the proxy already closed the connection."""
        if not data:
            return True
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True
            return False
        return True

    def read(self, timeout: float) -> bool:
        """Read what comes within ``timeout``; False once the connection is closed."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return True
        except OSError:
            self.closed = True
            return False
        if not data:
            self.closed = True
            return False
        try:
            self.events += self.h2.receive_data(data)
        except H2Error:
            pass  # after GOAWAY the h2 client library refuses more frames
        for event in self.events if self.acking else ():
            if isinstance(event, DataReceived) and event.flow_controlled_length and not getattr(event, "_acked", False):
                event._acked = True
                try:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                except H2Error:
                    pass
        try:
            self.flush()
        except H2Error:
            pass
        return True

    def headers(self, path: str, method: str = "GET", extra: Sequence[Tuple[bytes, bytes]] = ()) -> List[Tuple[bytes, bytes]]:
        return [(b":method", method.encode()), (b":path", path.encode()), (b":scheme", b"http"),
                (b":authority", b"localhost")] + list(extra)

    def get(self, path: str, deadline: float = 10.0) -> Tuple[int, bytes]:
        """One GET on this connection, answered within ``deadline`` seconds: (status, body)."""
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, self.headers(path), end_stream=True)
        self.flush()
        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            status, body, ended = self.response(stream_id)
            if ended:
                return status, body
            if not self.read(0.2):
                break
        status, body, ended = self.response(stream_id)
        assert ended, f"stream {stream_id} not answered (closed={self.closed})"
        return status, body

    def response(self, stream_id: int) -> Tuple[int, bytes, bool]:
        status, body, ended = 0, b"", False
        for event in self.events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, DataReceived):
                body += event.data
            elif isinstance(event, (StreamEnded, StreamReset)):
                ended = True
        return status, body, ended

    def reset_streams(self, stream_id: int) -> List[int]:
        return [event.stream_id for event in self.events if isinstance(event, StreamReset)]

    def wait_closed(self, deadline: float = 10.0) -> bool:
        """Read until the proxy closes the connection (True) or ``deadline`` passes (False)."""
        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            if not self.read(0.2):
                return True
        return self.closed

    def goaway(self) -> Optional[int]:
        """The error code of the GOAWAY received, if any."""
        for event in self.events:
            if isinstance(event, ConnectionTerminated):
                return int(event.error_code)
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked client WebSocket frame (FIN set), payload under 64 KiB."""
    mask = os.urandom(4)
    head = bytes((0x80 | opcode,))
    if len(payload) < 126:
        head += bytes((0x80 | len(payload),))
    else:
        head += bytes((0x80 | 126,)) + len(payload).to_bytes(2, "big")
    return head + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def ws_messages(data: bytes) -> List[Tuple[int, bytes]]:
    """(opcode, payload) of the complete unmasked server frames in ``data``."""
    found = []
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        start = 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        if len(data) < start + length:
            break
        found.append((opcode, data[start : start + length]))
        data = data[start + length :]
    return found
