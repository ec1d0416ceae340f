"""Backend failure modes as a client sees them: JSON 502/504, cut responses."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from speedproxy import __version__
from speedproxy.testing import (
    ProxyProcess,
    RawClient,
    RawResponse,
    backend_entry,
    close_mid_response,
    free_port,
    read_request_head,
    stall,
)

READ_TIMEOUT = 1.0


def _malformed(sock: socket.socket, stopping: threading.Event) -> None:
    read_request_head(sock)
    sock.sendall(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok")


def _garbage(sock: socket.socket, stopping: threading.Event) -> None:
    read_request_head(sock)
    sock.sendall(b"this is not http at all\r\n\r\n")


def _conflicting_length(sock: socket.socket, stopping: threading.Event) -> None:
    read_request_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk")


def _late_bad_chunk(relayed: threading.Event):
    def handler(sock: socket.socket, stopping: threading.Event) -> None:
        read_request_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        # The bad chunk follows only once the client has the first one.
        if relayed.wait(5.0):
            sock.sendall(b"zz\r\nabc\r\n0\r\n\r\n")
        stopping.wait(5.0)

    return handler


def _bad_chunks(sock: socket.socket, stopping: threading.Event) -> None:
    read_request_head(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")


@pytest.fixture(scope="module")
def failing(module_stack):
    stalled = module_stack.backend(stall(), name="stalled")
    cutting = module_stack.backend(close_mid_response(total=4 * 1024 * 1024, sent=256 * 1024), name="cutting")
    malformed = module_stack.raw_backend(_malformed, name="malformed")
    garbage = module_stack.raw_backend(_garbage, name="garbage")
    conflicting = module_stack.raw_backend(_conflicting_length, name="conflicting")
    bad_chunks = module_stack.raw_backend(_bad_chunks, name="bad-chunks")
    relayed = threading.Event()
    late_bad = module_stack.raw_backend(_late_bad_chunk(relayed), name="late-bad-chunk")
    ok = module_stack.backend(name="ok")
    groups = {
        # One dead upstream per test: passive health checks may mark a
        # backend down after failures (then 503 is the right answer).
        "dead_get": (("127.0.0.1", free_port()), "/dead-get"),
        "dead_post": (("127.0.0.1", free_port()), "/dead-post"),
        "dead_more": (("127.0.0.1", free_port()), "/dead-more"),
        "ok": (ok, "/ok"),
        "stalled": (stalled, "/stall"),
        "cutting": (cutting, "/cut"),
        "malformed": (malformed, "/malformed"),
        "garbage": (garbage, "/garbage"),
        "conflicting": (conflicting, "/conflicting"),
        "bad_chunks": (bad_chunks, "/bad-chunks"),
        "late_bad": (late_bad, "/late-bad-chunk"),
    }
    config = {
        "server": {"upstream_read_timeout": "1s", "upstream_connect_timeout": "1s"},
        "backends": {name: [backend_entry(server, id=name)] for name, (server, _) in groups.items()},
        "routing": {
            name: {"path": path, "upstream": name, "load_balancer": "round_robin"}
            for name, (_, path) in groups.items()
        },
    }
    proxy = module_stack.proxy(config=config)
    return {"proxy": proxy, "stalled": stalled, "cutting": cutting, "ok": ok, "relayed": relayed}


def _get(proxy: ProxyProcess, path: str, method: str = "GET", timeout: float = 10.0) -> RawResponse:
    with RawClient(*proxy.address, timeout=timeout) as client:
        client.request(method, path)
        return client.read_response()


def _assert_json_error(response: RawResponse, status: int, code: str) -> None:
    assert response.status == status, response.body
    assert response.header("Content-Type") == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail", "request_id"}
    assert body["error"] == code
    assert body["request_id"] == response.header("X-Request-Id")
    assert response.header("X-Speedproxy") == __version__


def test_dead_backend_is_502(failing) -> None:
    _assert_json_error(_get(failing["proxy"], "/dead-get/x"), 502, "bad_gateway")


def test_dead_backend_post_is_502(failing) -> None:
    _assert_json_error(_get(failing["proxy"], "/dead-post/x", method="POST"), 502, "bad_gateway")


def test_repeatedly_dead_backend_gives_json_502_or_503(failing) -> None:
    for _ in range(5):
        response = _get(failing["proxy"], "/dead-more/x")
        if response.status == 503:
            _assert_json_error(response, 503, "no_backend_available")
        else:
            _assert_json_error(response, 502, "bad_gateway")


def test_stalled_backend_is_504_within_read_timeout(failing) -> None:
    started = time.monotonic()
    response = _get(failing["proxy"], "/stall/x")
    elapsed = time.monotonic() - started
    _assert_json_error(response, 504, "gateway_timeout")
    assert READ_TIMEOUT * 0.8 <= elapsed < READ_TIMEOUT + 2.0, elapsed


def test_backend_closing_mid_response_cuts_the_client_off(failing) -> None:
    started = time.monotonic()
    with RawClient(*failing["proxy"].address, timeout=10.0) as client:
        client.request("GET", "/cut/x")
        response = client.read_response()
    assert response.status == 200
    assert response.truncated
    assert len(response.body) < 4 * 1024 * 1024
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("path", ["/malformed", "/garbage", "/conflicting"])
def test_malformed_backend_response_is_502(failing, path: str) -> None:
    _assert_json_error(_get(failing["proxy"], path), 502, "bad_gateway")


def test_malformed_chunked_backend_body_before_any_byte_is_502(failing) -> None:
    _assert_json_error(_get(failing["proxy"], "/bad-chunks"), 502, "bad_gateway")


def test_malformed_chunk_after_relayed_bytes_cuts_the_client_off(failing) -> None:
    relayed = failing["relayed"]
    relayed.clear()
    with RawClient(*failing["proxy"].address, timeout=5.0) as client:
        client.request("GET", "/late-bad-chunk")
        head = client.read_head()
        assert head.status == 200
        assert client.read_chunk() == b"hello"
        relayed.set()
        with pytest.raises(ConnectionError):
            while client.read_chunk():
                pass


def test_proxy_still_serves_after_failures(failing) -> None:
    for path in ("/dead-more/a", "/malformed", "/cut/x", "/stall/y"):
        with RawClient(*failing["proxy"].address, timeout=10.0) as client:
            client.request("GET", path)
            client.read_response()
    response = _get(failing["proxy"], "/ok/fine")
    assert response.status == 200
    assert response.json()["path"] == "/ok/fine"
