"""Client-side timeouts: idle keep-alive connections and slow request heads."""

from __future__ import annotations

import time

import pytest

from speedproxy.testing import ProxyProcess, RawClient

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def proxy(module_stack, module_backend) -> ProxyProcess:
    return module_stack.proxy(module_backend, idle_timeout="1s", read_timeout="1s")


def test_idle_keepalive_connection_is_closed(proxy: ProxyProcess) -> None:
    with RawClient(*proxy.address) as client:
        client.request("GET", "/idle")
        assert client.read_response().status == 200
        answered = time.monotonic()
        assert client.wait_closed(TIMEOUT + 3.0) == b""
        elapsed = time.monotonic() - answered
    assert TIMEOUT * 0.7 <= elapsed <= TIMEOUT + 2.0, elapsed


def test_connection_without_request_is_closed(proxy: ProxyProcess) -> None:
    with RawClient(*proxy.address) as client:
        opened = time.monotonic()
        assert client.wait_closed(TIMEOUT + 3.0) == b""
    assert time.monotonic() - opened >= TIMEOUT * 0.7


def test_busy_keepalive_connection_stays_open(proxy: ProxyProcess) -> None:
    # Requests spread over more than idle_timeout, each gap shorter than it.
    with RawClient(*proxy.address) as client:
        for index in range(4):
            client.request("GET", f"/busy/{index}")
            assert client.read_response().status == 200
            assert client.read_available(TIMEOUT * 0.4) == b""
        assert not client.closed_by_peer


def test_partial_head_gets_408(proxy: ProxyProcess, module_backend) -> None:
    module_backend.reset()
    with RawClient(*proxy.address) as client:
        client.send(b"GET /slow-head HTTP/1.1\r\nHost: x\r\nX-Partial: ")
        sent = time.monotonic()
        response = client.read_response()
        elapsed = time.monotonic() - sent
        assert client.wait_closed(3.0) == b""
    assert response.status == 408
    assert response.json()["error"] == "request_timeout"
    assert TIMEOUT * 0.7 <= elapsed <= TIMEOUT + 2.0, elapsed
    assert module_backend.heads == []


def test_partial_body_gets_408(proxy: ProxyProcess) -> None:
    with RawClient(*proxy.address) as client:
        client.send(b"POST /slow-body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-part")
        sent = time.monotonic()
        response = client.read_response()
        elapsed = time.monotonic() - sent
    assert response.status == 408
    assert response.json()["error"] == "request_timeout"
    assert elapsed <= TIMEOUT + 2.0, elapsed
