"""The client side in memory: refusals, limits and client timeouts."""

from __future__ import annotations

import pytest

GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def limited(make_proxy, server: str):
    return make_proxy(
        "server:\n"
        + "".join("  %s\n" % line for line in server.strip().splitlines())
        + "backends:\n  default: [{id: b1, host: 10.1.0.1, port: 8081}]\n"
        + "routing:\n  default: {path: /, upstream: default}\n"
    )


@pytest.mark.parametrize(
    "data,status,code",
    [
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "http_version_not_supported"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not_implemented"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: magic\r\n\r\n", 417, "expectation_failed"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_request"),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n", 431,
         "request_header_fields_too_large"),
    ],
)
def test_refused_requests(proxy, data: bytes, status: int, code: str) -> None:
    client = proxy.client()
    client.send(data + GET)  # the pipelined request after a refused one is never served
    response = client.response()
    assert response.status == status
    body = response.json()
    assert body["error"] == code
    assert body["request_id"] == response.header(b"x-request-id").decode()
    assert response.header(b"connection") == b"close"
    assert client.closed
    assert proxy.connects == []


def test_head_over_max_header_size_is_431(proxy) -> None:
    client = proxy.client()
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 5000)
    response = client.response()
    assert response.status == 431
    assert client.closed
    assert proxy.connects == []


def test_complete_head_over_max_header_size_is_431(proxy) -> None:
    client = proxy.client()
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    assert client.response().status == 431


def test_empty_line_before_a_request_tolerated(proxy) -> None:
    client = proxy.client()
    client.send(b"\r\n" + GET)
    backend = proxy.accept()
    assert backend.received().startswith(b"GET / HTTP/1.1\r\n")


def test_body_over_max_body_size_is_413(make_proxy) -> None:
    harness = limited(make_proxy, "max_body_size: 10")
    client = harness.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n01234567890")
    response = client.response()
    assert response.status == 413
    assert response.json()["error"] == "content_too_large"
    assert response.header(b"connection") == b"close"
    assert client.closed
    assert harness.connects == []


def test_body_at_max_body_size_is_relayed(make_proxy) -> None:
    harness = limited(make_proxy, "max_body_size: 10")
    client = harness.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789")
    backend = harness.accept()
    assert backend.received().endswith(b"0123456789")


def test_chunked_body_over_max_body_size_is_413(make_proxy) -> None:
    harness = limited(make_proxy, "max_body_size: 10")
    client = harness.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    backend = harness.accept()
    backend.take()
    client.send(b"6\r\n012345\r\n")
    assert backend.take() == b"6\r\n012345\r\n"
    client.send(b"5\r\n67890\r\n0\r\n\r\n")
    assert backend.received() == b""  # the piece over the limit is not forwarded
    response = client.response()
    assert response.status == 413
    assert client.closed


def test_malformed_chunked_body_is_400(proxy) -> None:
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    backend = proxy.accept()
    backend.take()
    client.send(b"3\r\nabcXX\r\n")
    response = client.response()
    assert response.status == 400
    assert response.header(b"connection") == b"close"
    assert client.closed
    assert b"XX" not in backend.received()


def test_request_refused_mid_body_releases_the_backend(proxy) -> None:
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    backend = proxy.accept()
    client.send(b"3\r\nabcXX\r\n")
    assert client.response().status == 400
    assert proxy.backend("b1").active_connections == 0
    assert backend.transport.disconnecting
    # Whatever the backend answers later must not reach the client.
    before = client.received()
    backend.send(OK)
    assert client.received() == before


def test_request_refused_while_connecting_releases_the_backend(make_proxy) -> None:
    harness = limited(make_proxy, "max_body_size: 4")
    client = harness.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    client.send(b"5\r\n01234\r\n")  # the backend connection is still being opened
    assert client.response().status == 413
    harness.accept()
    assert harness.backend("b1").active_connections == 0


def test_body_in_the_first_packet_is_checked_before_connecting(make_proxy) -> None:
    harness = limited(make_proxy, "max_body_size: 4")
    client = harness.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n")
    assert client.response().status == 413
    assert harness.reactor.tcpClients == []  # no backend was even contacted


def test_request_head_timeout_is_408(proxy) -> None:
    client = proxy.client()
    client.send(b"GET / HTTP/1.1\r\nHo")
    proxy.reactor.advance(31)
    proxy.core.sweeper.sweep()
    response = client.response()
    assert response.status == 408
    assert client.closed


def test_request_body_timeout_is_408(proxy) -> None:
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234")
    proxy.accept()
    proxy.reactor.advance(20)
    proxy.core.sweeper.sweep()
    assert client.received() == b""
    proxy.reactor.advance(11)
    proxy.core.sweeper.sweep()
    response = client.response()
    assert response.status == 408
    assert response.json()["error"] == "request_timeout"
    assert client.closed


def test_idle_keep_alive_connection_closed(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    proxy.accept().send(OK)
    proxy.reactor.advance(59)
    proxy.core.sweeper.sweep()
    assert not client.closed
    proxy.reactor.advance(2)
    proxy.core.sweeper.sweep()
    assert client.closed
    assert client.response().status == 200  # no error written on an idle close


def test_write_timeout_aborts_a_client_that_stopped_reading(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123")
    client.protocol.pauseProducing()
    proxy.reactor.advance(31)
    proxy.core.sweeper.sweep()
    assert client.transport.disconnected
    client.lose()
    assert backend.transport.disconnected


def test_max_conn_refuses_extra_connections(make_proxy) -> None:
    harness = limited(make_proxy, "max_conn: 1")
    first = harness.client()
    second = harness.client()
    response = second.response()
    assert response.status == 503
    assert response.json()["error"] == "too_many_connections"
    assert response.header(b"connection") == b"close"
    second.send(GET)
    assert harness.connects == []  # nothing from the refused connection is served
    first.send(GET)
    harness.accept().send(OK)
    assert first.response().status == 200
    second.lose()
    first.lose()
    third = harness.client()
    assert third.received() == b""


def test_max_conn_closes_the_refused_connection(make_proxy) -> None:
    harness = limited(make_proxy, "max_conn: 1")
    harness.client()
    second = harness.client()
    assert second.response().status == 503
    assert second.closed


def test_request_ids_unique_per_request(proxy) -> None:
    client = proxy.client()
    ids = set()
    backend = None
    for _ in range(3):
        client.send(GET)
        if backend is None:
            backend = proxy.accept()
        ids.add(dict(backend.request_head()[1])[b"X-Request-Id"])
        backend.take()
        backend.send(OK)
    assert len(ids) == 3


def test_drain_waits_for_clients(proxy) -> None:
    fired = []
    client = proxy.client()
    client.send(GET)
    proxy.core.when_no_clients().addCallback(fired.append)
    client.protocol.close_when_idle()
    assert fired == [] and not client.closed
    proxy.accept().send(OK)
    assert client.closed
    client.lose()
    assert fired == [None]
