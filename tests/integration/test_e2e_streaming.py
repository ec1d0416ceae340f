"""Bodies stream both ways, byte-exact, with backpressure; connections are reused."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from typing import Iterator

import pytest

from speedproxy.testing import (
    HTTPBackend,
    ProxyProcess,
    RawClient,
    fixed_body,
    paced,
    pattern_chunks,
    pattern_sha256,
    streaming,
)

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def origin(module_stack) -> HTTPBackend:
    return module_stack.backend(name="stream-origin")


@pytest.fixture(scope="module")
def proxy(module_stack, origin: HTTPBackend) -> ProxyProcess:
    return module_stack.proxy(origin, read_timeout="10s", upstream_read_timeout="10s")


def test_first_chunk_arrives_while_backend_still_sends(proxy: ProxyProcess, origin: HTTPBackend) -> None:
    client_has_first = threading.Event()
    outcome = {}

    def pieces() -> Iterator[bytes]:
        yield b"first piece\n"
        # Only the client reading piece 1 lets the backend go on; bounded.
        outcome["released"] = client_has_first.wait(10.0)
        yield b"second piece\n"

    origin.route("/stream/events", streaming(pieces))
    with RawClient(*proxy.address, timeout=5.0) as client:
        client.request("GET", "/stream/events")
        head = client.read_head()
        assert head.status == 200
        assert head.header("Transfer-Encoding") == "chunked"
        assert client.read_chunk() == b"first piece\n"
        client_has_first.set()
        rest = b""
        while True:
            chunk = client.read_chunk()
            if not chunk:
                break
            rest += chunk
    assert outcome["released"] is True
    assert rest == b"second piece\n"


def test_paced_pieces_each_arrive_before_the_next_is_sent(proxy: ProxyProcess, origin: HTTPBackend) -> None:
    gates = [None, threading.Event(), threading.Event()]
    origin.route("/stream/paced", paced([b"a" * 10, b"b" * 1000, b"c" * 100000], gates, timeout=10.0))
    with RawClient(*proxy.address, timeout=5.0) as client:
        client.request("GET", "/stream/paced")
        assert client.read_head().status == 200
        assert client.read_chunk() == b"a" * 10
        gates[1].set()
        assert client.read_chunk() == b"b" * 1000
        gates[2].set()
        rest = b""
        while True:
            chunk = client.read_chunk()
            if not chunk:
                break
            rest += chunk
    assert rest == b"c" * 100000
    assert not [error for error in origin.errors if error.startswith("gate")]


def test_large_content_length_upload_is_byte_exact(proxy: ProxyProcess, origin: HTTPBackend) -> None:
    size = 100 * MiB
    expected = pattern_sha256(size)
    with RawClient(*proxy.address, timeout=30.0) as client:
        client.send(b"PUT /upload/cl HTTP/1.1\r\nHost: up\r\nContent-Length: %d\r\n\r\n" % size)
        for piece in pattern_chunks(size, 256 * 1024):
            client.send(piece)
        response = client.read_response()
    assert response.status == 200, response.body
    seen = response.json()
    assert seen["body_length"] == size
    assert seen["body_sha256"] == expected


def test_large_chunked_upload_is_byte_exact(proxy: ProxyProcess, origin: HTTPBackend) -> None:
    size = 20 * MiB
    expected = pattern_sha256(size)
    sizes = [1, 7, 4096, 65536, 100000, 3]
    with RawClient(*proxy.address, timeout=30.0) as client:
        client.send(b"POST /upload/chunked HTTP/1.1\r\nHost: up\r\nTransfer-Encoding: chunked\r\n\r\n")
        # Odd chunk sizes that do not line up with the proxy's reads.
        pending = b""
        index = 0
        for piece in pattern_chunks(size):
            pending += piece
            while len(pending) >= 100000:
                take = sizes[index % len(sizes)]
                index += 1
                client.send(b"%x\r\n%s\r\n" % (take, pending[:take]))
                pending = pending[take:]
        while pending:
            take = min(len(pending), 65536)
            client.send(b"%x\r\n%s\r\n" % (take, pending[:take]))
            pending = pending[take:]
        client.send(b"0\r\n\r\n")
        response = client.read_response()
    assert response.status == 200, response.body
    seen = response.json()
    assert seen["body_length"] == size
    assert seen["body_sha256"] == expected
    assert origin.last_request.chunked is True


def test_large_download_is_byte_exact_with_bounded_memory(proxy: ProxyProcess, origin: HTTPBackend) -> None:
    size = 100 * MiB
    origin.route("/download/100m", fixed_body(size))
    baseline = proxy.rss_bytes()
    peak = baseline
    digest = hashlib.sha256()
    received = 0
    with RawClient(*proxy.address, timeout=30.0) as client:
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        client.request("GET", "/download/100m")
        head = client.read_head()
        assert head.status == 200
        assert head.header("Content-Length") == str(size)
        next_pause = 4 * MiB
        while received < size:
            data = client.recv_some(min(256 * 1024, size - received))
            assert data, f"connection closed after {received} bytes"
            digest.update(data)
            received += len(data)
            if received >= next_pause and next_pause <= 24 * MiB:
                # A slow reader: stop for a while.  Without backpressure the
                # proxy would pull the rest of the body into memory now.
                next_pause += 10 * MiB
                stop = time.monotonic() + 0.4
                while time.monotonic() < stop:
                    peak = max(peak, proxy.rss_bytes())
                    time.sleep(0.05)
            elif received % (8 * MiB) < 256 * 1024:
                peak = max(peak, proxy.rss_bytes())
    assert received == size
    assert digest.hexdigest() == pattern_sha256(size)
    assert peak - baseline < 60 * MiB, f"proxy RSS grew by {(peak - baseline) / MiB:.1f} MiB"


def test_thousand_keepalive_requests_reuse_upstream_connections(proxy: ProxyProcess, origin: HTTPBackend) -> None:
    first = len(origin.requests)
    with RawClient(*proxy.address) as client:
        for index in range(1000):
            client.request("GET", f"/ka/{index}")
            response = client.read_response()
            assert response.status == 200
            assert response.json()["path"] == f"/ka/{index}"
        assert not client.closed_by_peer
    seen = [request for request in origin.requests[first:] if request.path.startswith("/ka/")]
    assert len(seen) == 1000
    connections = {request.connection for request in seen}
    assert len(connections) <= 4, f"{len(connections)} upstream connections for 1000 requests"


def test_pipelined_requests_are_answered_in_order(proxy: ProxyProcess, origin: HTTPBackend) -> None:
    with RawClient(*proxy.address) as client:
        client.send(
            b"GET /pipe/1 HTTP/1.1\r\nHost: p\r\n\r\n"
            b"POST /pipe/2 HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\nhello"
            b"GET /pipe/3 HTTP/1.1\r\nHost: p\r\n\r\n"
        )
        paths = []
        for _ in range(3):
            response = client.read_response()
            assert response.status == 200
            paths.append(response.json()["path"])
    assert paths == ["/pipe/1", "/pipe/2", "/pipe/3"]


def test_expect_100_continue(proxy: ProxyProcess, origin: HTTPBackend) -> None:
    body = b"payload after continue"
    with RawClient(*proxy.address, timeout=5.0) as client:
        client.send(
            b"POST /expect HTTP/1.1\r\nHost: e\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        interim = client.read_head()
        assert interim.status == 100
        client.send(body)
        response = client.read_response()
    assert response.status == 200
    assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert response.interim == []


def test_client_gone_mid_response_closes_upstream_cleanly(proxy: ProxyProcess, origin: HTTPBackend) -> None:
    origin.route("/gone/huge", fixed_body(500 * MiB))
    with RawClient(*proxy.address, timeout=10.0) as client:
        client.request("GET", "/gone/huge")
        head = client.read_head()
        assert head.status == 200
        got = 0
        while got < 2 * MiB:
            data = client.recv_some()
            assert data
            got += len(data)
    huge = origin.wait_for(
        lambda b: [r for r in b.requests if r.path == "/gone/huge"], 5.0, "the huge request"
    )[-1]
    # The proxy drops (or cleanly finishes) that upstream connection...
    origin.wait_for(lambda b: huge.connection in b.closed_connections, 10.0, "the upstream connection to close")
    # ... and the next requests get their own answers, nothing of the old body.
    for index in range(3):
        with RawClient(*proxy.address, timeout=10.0) as client:
            client.request("GET", f"/gone/after/{index}")
            response = client.read_response()
            assert response.status == 200
            assert response.json()["path"] == f"/gone/after/{index}"
            assert client.read_available(0.05) == b""
