"""Helpers of the gRPC proxying end-to-end tests (``test_e2e_grpc_proxy.py``).

:class:`EchoServer` runs a small grpcio service (``demo.Echo``, raw bytes in
and out through generic handlers: no .proto to compile) in a helper process:

* ``Unary``: echoes the request; ``notfound:<x>`` aborts with NOT_FOUND and
  details; ``sleep:<seconds>`` waits that long (or until cancelled: then the
  cancellation is counted); ``big:<bytes>`` answers that many bytes; the
  answer carries ``x-echo-initial`` metadata and an ``x-echo-trailer`` trailer.
* ``Count``: a server stream of ``<n>:<size>`` messages (``<size>`` bytes each).
* ``Digest``: a client stream; answers ``<messages>:<bytes>:<sha256 hex>``.
* ``Chat``: bidirectional; every message comes back prefixed with ``echo:``.
* ``Cancelled``: how many calls the service saw cancelled so far.
* ``Sleeping``: how many ``sleep:`` calls its handlers started so far (a call
  in flight at the proxy may not have reached a handler yet).

Run as a script (``python grpc_proxy_support.py PORT [CERT KEY]``: with TLS
when given a certificate and key) it serves until killed and prints ``ready``
once it listens.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent import futures
from typing import Any, Iterator, Optional

if platform.python_implementation() == "PyPy" or sys.version_info < (3, 10):  # pragma: no cover
    import pytest

    # grpcio has no build there (the grpc extra installs nothing); the proxy's
    # relay needs only h2 and is covered there by the unit tests.
    pytest.skip("grpcio installs nothing here (PyPy, or Python < 3.10)", allow_module_level=True)

import grpc  # noqa: E402

SERVICE = "demo.Echo"
TIMEOUT = 15.0


def _identity(data: bytes) -> bytes:
    return data


class _Echo:
    def __init__(self) -> None:
        self.cancelled = 0
        self.sleeping = 0
        self.lock = threading.Lock()

    def unary(self, request: bytes, context: Any) -> bytes:
        context.send_initial_metadata((("x-echo-initial", "first"),))
        context.set_trailing_metadata((("x-echo-trailer", "last"),))
        if request.startswith(b"notfound:"):
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + request[9:].decode())
        if request.startswith(b"sleep:"):
            with self.lock:
                self.sleeping += 1
            give_up = time.monotonic() + float(request[6:])
            while time.monotonic() < give_up:
                if not context.is_active():
                    with self.lock:
                        self.cancelled += 1
                    return b""
                time.sleep(0.02)
            return b"slept"
        if request.startswith(b"big:"):
            return _pattern(int(request[4:]))
        return request

    def count(self, request: bytes, context: Any) -> Iterator[bytes]:
        number, size = (int(part) for part in request.split(b":"))
        for index in range(number):
            yield _pattern(size, index)

    def digest(self, requests: Iterator[bytes], context: Any) -> bytes:
        digest = hashlib.sha256()
        count = total = 0
        for message in requests:
            digest.update(message)
            count += 1
            total += len(message)
        return b"%d:%d:%s" % (count, total, digest.hexdigest().encode())

    def chat(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for message in requests:
            yield b"echo:" + message

    def cancelled_count(self, request: bytes, context: Any) -> bytes:
        with self.lock:
            return b"%d" % self.cancelled

    def sleeping_count(self, request: bytes, context: Any) -> bytes:
        with self.lock:
            return b"%d" % self.sleeping


def _pattern(size: int, seed: int = 0) -> bytes:
    block = bytes((seed + index) % 251 for index in range(251))
    return (block * (size // 251 + 1))[:size]


def pattern(size: int, seed: int = 0) -> bytes:
    """The bytes ``big:<size>`` and ``Count`` answer."""
    return _pattern(size, seed)


def serve(port: int, cert: str = "", key: str = "") -> None:
    echo = _Echo()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(echo.unary, _identity, _identity),
            "Count": grpc.unary_stream_rpc_method_handler(echo.count, _identity, _identity),
            "Digest": grpc.stream_unary_rpc_method_handler(echo.digest, _identity, _identity),
            "Chat": grpc.stream_stream_rpc_method_handler(echo.chat, _identity, _identity),
            "Cancelled": grpc.unary_unary_rpc_method_handler(echo.cancelled_count, _identity, _identity),
            "Sleeping": grpc.unary_unary_rpc_method_handler(echo.sleeping_count, _identity, _identity),
        },
    )
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=(handler,), options=options)
    if cert:
        with open(cert, "rb") as chain, open(key, "rb") as private:
            credentials = grpc.ssl_server_credentials([(private.read(), chain.read())])
        server.add_secure_port(f"127.0.0.1:{port}", credentials)
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


class EchoServer:
    """The echo service in a helper process on ``port`` (over TLS with ``cert`` and ``key`` files)."""

    def __init__(self, port: int, cert: str = "", key: str = "") -> None:
        self.port = port
        self.tls = [cert, key] if cert else []
        self.process: Optional["subprocess.Popen[str]"] = None

    def start(self) -> "EchoServer":
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(self.port), *self.tls],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "ready", f"the echo service did not start: {line!r}"
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class EchoClient:
    """A grpcio client of ``demo.Echo`` at ``127.0.0.1:port`` (through the proxy)."""

    def __init__(self, port: int) -> None:
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)

    def _method(self, kind: str, name: str, service: str = SERVICE) -> Any:
        return getattr(self.channel, kind)(f"/{service}/{name}", request_serializer=_identity, response_deserializer=_identity)

    def unary(self, request: bytes, timeout: float = TIMEOUT, service: str = SERVICE) -> Any:
        """``(answer, call)`` of a Unary call (the call has the metadata)."""
        return self._method("unary_unary", "Unary", service).with_call(request, timeout=timeout)

    def count(self, number: int, size: int) -> Iterator[bytes]:
        return self._method("unary_stream", "Count")(b"%d:%d" % (number, size), timeout=TIMEOUT)

    def digest(self, messages: Iterator[bytes]) -> bytes:
        return self._method("stream_unary", "Digest")(messages, timeout=TIMEOUT)

    def chat(self, messages: Iterator[bytes]) -> Iterator[bytes]:
        return self._method("stream_stream", "Chat")(messages, timeout=TIMEOUT)

    def cancelled(self) -> int:
        return int(self._method("unary_unary", "Cancelled")(b"", timeout=TIMEOUT))

    def sleeping(self) -> int:
        return int(self._method("unary_unary", "Sleeping")(b"", timeout=TIMEOUT))

    def close(self) -> None:
        self.channel.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]), *sys.argv[2:4])
