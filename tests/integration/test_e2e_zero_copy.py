"""Large bodies go through a kernel pipe (``server.zero_copy``), byte-exact either way."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from typing import List

import pytest

from speedproxy.proxy.splicing import splice_supported
from speedproxy.testing import HTTPBackend, ProxyProcess, RawClient, fixed_body, pattern_sha256, wait_until

MiB = 1024 * 1024

# Around the 16 KiB head read and the 16 KiB splice threshold, and larger.
SIZES = [1000, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 40000, 100 * 1024, 3 * MiB]


@pytest.fixture(scope="module")
def origin(module_stack) -> HTTPBackend:
    backend = module_stack.backend(name="zero-copy-origin")
    for size in SIZES:
        backend.route(f"/zc/{size}", fixed_body(size))
    backend.route("/zc/slow", fixed_body(8 * MiB))
    return backend


@pytest.fixture(scope="module", params=[True, False], ids=["zero_copy", "copy"])
def proxy(request, module_stack, origin: HTTPBackend) -> ProxyProcess:
    proxy = module_stack.proxy(origin, zero_copy=request.param, read_timeout="20s", upstream_read_timeout="20s")
    proxy.zero_copy = request.param  # type: ignore[attr-defined]
    return proxy


def _serving_pid(proxy: ProxyProcess) -> int:
    workers = proxy.worker_pids()
    return workers[0] if workers else proxy.pid


def _pipe_fds(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
                count += 1
        except OSError:
            pass  # closed meanwhile
    return count


def test_bodies_of_every_size_are_byte_exact_on_one_connection(proxy: ProxyProcess, origin: HTTPBackend) -> None:
    first = len(origin.requests)
    with RawClient(*proxy.address, timeout=20.0) as client:
        for size in SIZES + SIZES[::-1]:
            client.request("GET", f"/zc/{size}")
            response = client.read_response()
            assert response.status == 200
            assert len(response.body) == size
            assert hashlib.sha256(response.body).hexdigest() == pattern_sha256(size)
        # HEAD of a large body: no body bytes, and the stream stays in step.
        client.request("HEAD", f"/zc/{3 * MiB}")
        head = client.read_response(head_only=True)
        assert head.status == 200 and head.header("Content-Length") == str(3 * MiB)
        client.request("GET", "/zc/after")
        echo = client.read_response()
        assert echo.status == 200 and echo.json()["path"] == "/zc/after"
        assert client.read_available(0.05) == b""
        assert not client.closed_by_peer
    seen = origin.requests[first:]
    assert len(seen) == 2 * len(SIZES) + 2
    # Every spliced body left its backend connection clean for the next request.
    assert len({request.connection for request in seen}) <= 2


def test_slow_clients_get_every_byte_and_pipes_are_used_only_when_on(proxy: ProxyProcess) -> None:
    size = 8 * MiB
    pid = _serving_pid(proxy)
    before = _pipe_fds(pid)
    clients: List[RawClient] = []
    try:
        for _ in range(3):
            client = RawClient(*proxy.address, timeout=20.0)
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            clients.append(client)
            client.request("GET", "/zc/slow")
        # Nobody reads: three bodies are stuck in the proxy, in pipes if spliced.
        for client in clients:
            assert client.read_head().status == 200
        if proxy.zero_copy and splice_supported():  # type: ignore[attr-defined]
            wait_until(lambda: _pipe_fds(pid) >= before + 4, 10.0, "pipes for the stalled bodies")
        else:
            assert _pipe_fds(pid) == before
        for client in clients:
            digest = hashlib.sha256()
            received = 0
            while received < size:
                data = client.recv_some(min(256 * 1024, size - received))
                assert data, f"connection closed after {received} bytes"
                digest.update(data)
                received += len(data)
            assert digest.hexdigest() == pattern_sha256(size)
            # The connection is still in step for the next request.
            client.request("GET", "/zc/1000")
            after = client.read_response()
            assert after.status == 200
            assert hashlib.sha256(after.body).hexdigest() == pattern_sha256(1000)
    finally:
        for client in clients:
            client.close()


def _overrunning_backend(module_stack):
    """The first answer on the first connection carries stray bytes after its body."""
    body = 100_000
    connections = {"count": 0}
    lock = threading.Lock()

    def handler(sock: socket.socket, stopping) -> None:
        with lock:
            connections["count"] += 1
            number = connections["count"]
        buffer = b""
        served = 0
        while not stopping.is_set():
            while b"\r\n\r\n" not in buffer:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
            _, _, buffer = buffer.partition(b"\r\n\r\n")
            served += 1
            if number == 1 and served == 1:
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % body + b"x" * body
                    + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
                )
            else:
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nGOOD!")

    return module_stack.raw_backend(handler, name="overrun"), connections


@pytest.mark.parametrize("zero_copy", [True, False], ids=["zero_copy", "copy"])
def test_a_backend_sending_past_the_body_is_not_reused(stack, zero_copy: bool) -> None:
    backend, connections = _overrunning_backend(stack)
    proxy = stack.proxy(backend, zero_copy=zero_copy)
    with RawClient(*proxy.address, timeout=10.0) as client:
        # Pipelined: the second request is sent on while the first is relayed.
        client.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        first = client.read_response()
        second = client.read_response()
    assert first.status == 200 and first.body == b"x" * 100_000
    assert second.status == 200 and second.body == b"GOOD!"
    assert connections["count"] == 2  # the dirty connection was dropped
