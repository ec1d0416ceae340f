"""End-to-end relaying through ClientConnection, Exchange and UpstreamConnection, in memory."""

from __future__ import annotations

import pytest

from speedproxy import __version__

GET = b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def test_simple_get_is_relayed(proxy) -> None:
    client = proxy.client("192.0.2.50")
    client.send(
        b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n\r\n"
    )
    assert proxy.connects == [("10.1.0.1", 8081)]
    assert client.received() == b""
    backend = proxy.accept()
    line, headers = backend.request_head()
    assert line == b"GET /a/b?c=d HTTP/1.1"
    fields = {name.lower(): value for name, value in headers}
    assert fields[b"host"] == b"example.com"
    assert fields[b"accept"] == b"*/*"
    for hop in (b"connection", b"x-hop", b"keep-alive"):
        assert hop not in fields
    assert fields[b"x-forwarded-for"] == b"7.7.7.7, 192.0.2.50"
    assert fields[b"x-real-ip"] == b"192.0.2.50"  # untrusted peer: its header is ignored
    assert fields[b"x-forwarded-proto"] == b"http"
    assert fields[b"x-forwarded-host"] == b"example.com"
    assert fields[b"via"] == b"1.1 speedproxy"
    request_id = fields[b"x-request-id"]
    assert backend.received().endswith(b"\r\n\r\n")
    assert b"content-length" not in fields and b"transfer-encoding" not in fields

    backend.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nServer: b\r\n\r\nhello")
    response = client.response()
    assert (response.status, response.reason, response.body) == (200, b"OK", b"hello")
    assert response.header(b"content-type") == b"text/plain"
    assert response.header(b"server") == b"b"
    assert response.header(b"x-request-id") == request_id
    assert response.header(b"x-speedproxy") == __version__.encode()
    assert response.header(b"connection") is None
    assert not client.closed
    assert proxy.core.pool.idle_count() == 1
    assert proxy.backend("b1").active_connections == 0
    assert proxy.core.requests_served == 1


def test_trusted_peer_real_ip_header_used(proxy) -> None:
    client = proxy.client("127.0.0.1")
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Real-IP: 203.0.113.9\r\n\r\n")
    fields = dict(proxy.accept().request_head()[1])
    assert fields[b"X-Real-IP"] == b"203.0.113.9"
    assert fields[b"X-Forwarded-For"] == b"127.0.0.1"


def test_sane_request_id_kept_and_insane_replaced(proxy) -> None:
    client = proxy.client()
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: my-id.1\r\n\r\n")
    backend = proxy.accept()
    assert dict(backend.request_head()[1])[b"X-Request-Id"] == b"my-id.1"
    backend.take()
    backend.send(OK)
    assert client.response().header(b"x-request-id") == b"my-id.1"
    client.take()
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: <bad id>\r\n\r\n")
    sent = dict(backend.request_head()[1])[b"X-Request-Id"]
    assert sent not in (b"<bad id>", b"my-id.1")
    backend.send(OK)
    assert client.response().header(b"x-request-id") == sent


def test_keep_alive_reuses_the_upstream_connection(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.take()
    backend.send(OK)
    client.take()
    client.send(b"GET /second HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert len(proxy.reactor.tcpClients) == 1
    assert backend.take().startswith(b"GET /second HTTP/1.1\r\n")
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
    assert client.response().body == b"second"
    assert backend.protocol.requests == 2
    # A second client is served on the same pooled connection too.
    other = proxy.client()
    other.send(GET)
    assert len(proxy.reactor.tcpClients) == 1
    backend.send(OK)
    assert other.response().body == b"hello"


def test_pipelined_requests_answered_in_order(proxy) -> None:
    client = proxy.client()
    client.send(
        b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    backend = proxy.accept()
    assert backend.take().startswith(b"GET /1 ")  # the next one waits for this answer
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    second = backend.take()
    assert second.startswith(b"POST /2 ") and second.endswith(b"\r\n\r\nabc")
    backend.send(b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\n2")
    assert backend.take().startswith(b"GET /3 ")
    backend.send(b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n3\r\n0\r\n\r\n")
    responses = client.responses()
    assert [(r.status, r.body) for r in responses] == [(200, b"1"), (201, b"2"), (202, b"3")]
    assert not client.closed


def test_pipelined_requests_split_across_reads(proxy) -> None:
    client = proxy.client()
    data = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    for index in range(len(data)):
        client.send(data[index : index + 1])
    backend = proxy.accept()
    assert backend.take().startswith(b"GET /1 ")
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert backend.take().startswith(b"GET /2 ")
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    assert [r.body for r in client.responses()] == [b"1", b"2"]


def test_chunked_request_body_reencoded_before_connect(proxy) -> None:
    client = proxy.client()
    client.send(
        b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;name=value\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    backend = proxy.accept()
    head, _, body = backend.received().partition(b"\r\n\r\n")
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert fields[b"Transfer-Encoding"] == b"chunked"
    assert b"Content-Length" not in fields
    assert body == b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n"
    backend.send(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert client.response().status == 204
    assert not client.closed


def test_chunked_request_body_streamed_after_connect(proxy) -> None:
    client = proxy.client()
    client.send(b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    backend = proxy.accept()
    assert backend.take().endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    for byte in b"3\r\nabc\r\n":
        client.send(bytes([byte]))
    assert backend.take() == b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n"
    client.send(b"A\r\n0123456789\r\n0\r\n\r\n")
    assert backend.take() == b"a\r\n0123456789\r\n0\r\n\r\n"
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert client.response().status == 200
    assert proxy.core.pool.idle_count() == 1


def test_content_length_body_streamed(proxy) -> None:
    client = proxy.client()
    client.send(b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n012")
    backend = proxy.accept()
    head, _, body = backend.take().partition(b"\r\n\r\n")
    assert b"\r\nContent-Length: 10" in head
    assert body == b"012"
    client.send(b"3456")
    assert backend.take() == b"3456"
    client.send(b"789GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    assert backend.take() == b"789"
    backend.send(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert backend.take().startswith(b"GET /next ")
    backend.send(OK)
    assert [r.status for r in client.responses()] == [201, 200]


def test_expect_100_continue_sent_before_body_is_read(proxy) -> None:
    client = proxy.client()
    client.send(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert client.received() == b""  # not before the backend is reachable
    backend = proxy.accept()
    assert client.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert b"expect" not in backend.received().lower()
    client.send(b"data")
    assert backend.take().endswith(b"\r\n\r\ndata")
    # The backend's own interim answer is not relayed a second time.
    backend.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert client.received().startswith(b"HTTP/1.1 200 OK\r\n")
    assert client.response().body == b"ok"


def test_expect_with_body_already_sent_gets_no_100(proxy) -> None:
    client = proxy.client()
    client.send(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\ndata")
    backend = proxy.accept()
    assert client.received() == b""
    assert backend.received().endswith(b"data")


def test_head_response_has_no_body(proxy) -> None:
    client = proxy.client()
    client.send(b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    backend.take()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: video/mp4\r\n\r\n")
    response = client.response(head_request=True)
    assert response.header(b"content-length") == b"1234"
    assert client.received().endswith(b"\r\n\r\n")
    assert proxy.core.pool.idle_count() == 1
    client.take()
    client.send(GET)
    assert len(proxy.reactor.tcpClients) == 1
    backend.send(OK)
    assert client.response().body == b"hello"


@pytest.mark.parametrize("status", [204, 304])
def test_bodyless_statuses(proxy, status: int) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 %d X\r\nETag: \"e\"\r\n\r\n" % status)
    response = client.response()
    assert response.status == status
    assert response.header(b"transfer-encoding") is None
    assert client.received().endswith(b"\r\n\r\n")
    assert proxy.core.pool.idle_count() == 1


def test_chunked_response_rechunked_for_http11(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhel")
    backend.send(b"lo\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    response = client.response()
    assert response.chunked
    assert response.body == b"hello world"
    assert response.header(b"content-length") is None
    assert response.header(b"x-trailer") is None
    assert not client.closed


def test_chunked_response_keeps_upstream_connection(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert client.response().body == b"hello"
    assert not backend.transport.disconnecting
    assert proxy.core.pool.idle_count() == 1


@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n"])
def test_chunked_response_dechunked_for_http10(proxy, connection: bytes) -> None:
    client = proxy.client()
    client.send(b"GET / HTTP/1.0\r\n" + connection + b"\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    response = client.response(until_close=True)
    assert response.body == b"hello world"
    assert response.header(b"transfer-encoding") is None
    assert response.header(b"connection") == b"close"
    assert client.closed


def test_http10_keep_alive_with_length(proxy) -> None:
    client = proxy.client()
    client.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    proxy.accept().send(OK)
    response = client.response()
    assert response.body == b"hello"
    assert response.header(b"connection") is None
    assert not client.closed


def test_http10_closes_by_default(proxy) -> None:
    client = proxy.client()
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    proxy.accept().send(OK)
    assert client.response().header(b"connection") == b"close"
    assert client.closed


def test_client_connection_close(proxy) -> None:
    client = proxy.client()
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    backend = proxy.accept()
    assert b"connection: close" not in backend.received().lower()  # hop-by-hop
    backend.send(OK)
    assert client.response().header(b"connection") == b"close"
    assert client.closed
    assert proxy.core.pool.idle_count() == 1  # the backend connection is still good


def test_response_until_close_is_chunked_to_client(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nabc")
    assert client.received().endswith(b"\r\n3\r\nabc\r\n")
    backend.send(b"def")
    backend.close()
    response = client.response()
    assert response.chunked
    assert response.body == b"abcdef"
    assert not client.closed
    assert proxy.core.pool.idle_count() == 0
    assert proxy.backend("b1").active_connections == 0


def test_response_until_close_to_http10_client(proxy) -> None:
    client = proxy.client()
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.0 200 OK\r\n\r\nabc")
    backend.close()
    response = client.response(until_close=True)
    assert response.body == b"abc"
    assert client.closed


def test_large_content_length_response_streams(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 30000\r\n\r\n")
    assert client.received() == b""  # the head waits for the first body bytes
    backend.send(b"x" * 10000)
    assert client.received().endswith(b"x" * 10000)
    backend.send(b"y" * 20000)
    assert client.response().body == b"x" * 10000 + b"y" * 20000
    assert proxy.core.pool.idle_count() == 1


def test_backend_sends_more_than_content_length(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA")
    assert client.response().body == b"hello"
    assert proxy.core.pool.idle_count() == 0  # never reuse a confused connection


def test_backend_answers_before_the_body_is_complete(proxy) -> None:
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\npart")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    response = client.response()
    assert response.status == 413
    assert response.header(b"connection") == b"close"
    assert client.closed
    assert backend.transport.disconnecting
    assert proxy.core.pool.idle_count() == 0


def test_backend_connection_close_not_pooled(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
    response = client.response()
    assert response.body == b"hello"
    assert response.header(b"connection") is None  # our client keeps its keep-alive
    assert not client.closed
    assert proxy.core.pool.idle_count() == 0


def test_invalid_backend_response_is_502(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")
    response = client.response()
    assert response.status == 502
    assert response.json()["error"] == "bad_gateway"
    assert backend.transport.disconnecting
    assert proxy.backend("b1").active_connections == 0
    assert proxy.backend("b1").failures == 1


def test_malformed_chunked_response_after_head_aborts_client(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    backend.send(b"zz\r\n")
    assert client.transport.disconnected  # aborted: the response cannot be completed
    assert backend.transport.disconnecting
    assert proxy.backend("b1").active_connections == 0


def test_backend_101_refused(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert client.response().status == 502


def test_oversized_backend_head_is_502(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\n" + b"X-A: " + b"a" * (70 * 1024))
    assert client.response().status == 502


def test_head_error_response_has_no_body(make_proxy) -> None:
    harness = make_proxy(
        """\
        backends:
          default: [{id: b1, host: 10.1.0.1, port: 8081}]
        routing:
          api: {path: /api, upstream: default}
        """
    )
    client = harness.client()
    client.send(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n")
    response = client.response(head_request=True)
    assert response.status == 404
    assert client.received().endswith(b"\r\n\r\n")
    assert int(response.header(b"content-length")) > 0


PASSIVE_ONE = """\
backends:
  default:
    - {id: b1, host: 10.1.0.1, port: 8081, health_check: {passive_failures: 1, interval: 300s}}
routing:
  default: {path: /, upstream: default, load_balancer: round_robin}
"""
POST = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"


def test_backend_dropping_a_request_counts_against_passive_health(make_proxy) -> None:
    harness = make_proxy(PASSIVE_ONE)
    client = harness.client()
    client.send(POST)
    harness.accept().close()
    assert client.response().status == 502
    assert harness.backend("b1").down_until > 0


def test_operator_cut_does_not_count_against_passive_health(make_proxy) -> None:
    harness = make_proxy(PASSIVE_ONE)
    client = harness.client()
    client.send(POST)
    backend = harness.accept()
    assert harness.core.disconnect_backend("default", "b1") == 1
    assert backend.transport.disconnecting or getattr(backend.transport, "aborting", False)
    backend.close()  # what the reactor reports after the abort
    assert client.response().status == 502
    assert harness.backend("b1").down_until == 0
    assert harness.backend("b1").consecutive_failures == 0


def test_backend_closing_right_after_its_head_is_a_502_not_a_cut() -> None:
    """Issue 16: the head is held back until body bytes come, so nothing reached
    the client yet: a backend that closes then gets the client a clean 502."""
    from speedproxy.testing import InMemoryProxy

    proxy = InMemoryProxy()
    client = proxy.client()
    client.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
    backend.close()
    response = client.response()
    assert response.status == 502
    assert b"bad_gateway" in response.body


def test_backend_closing_mid_body_cuts_the_client() -> None:
    from speedproxy.testing import InMemoryProxy

    proxy = InMemoryProxy()
    client = proxy.client()
    client.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    backend.close()
    assert client.received().startswith(b"HTTP/1.1 200 OK")
    assert client.closed


def test_bytes_counted_for_an_error_after_a_held_back_head_are_the_errors() -> None:
    """Issue 16: after fail(), the bytes counted are those of the error sent,
    not the error plus the size of a backend head that never left."""
    from speedproxy.testing import InMemoryProxy

    proxy = InMemoryProxy()
    counted = []
    stats = proxy.core.stats

    class Recording:
        def __getattr__(self, name):
            return getattr(stats, name)

        def request_done(self, route, backend, status, seconds, bytes_out, bytes_in=0):
            counted.append((status, bytes_out))
            return stats.request_done(route, backend, status, seconds, bytes_out, bytes_in)

    proxy.core.stats = Recording()
    client = proxy.client()
    client.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Long: " + b"x" * 500 + b"\r\n\r\n")
    backend.close()
    assert client.response().status == 502
    assert counted == [(502, len(client.received()))]


@pytest.mark.parametrize(
    "route_keys",
    [
        "allow: ['0.0.0.0/0']",  # a request hook only
        "cors: {origins: ['https://a.example']}, compression: {}",  # head, body and local-answer hooks
        "cache: {enabled: true}",
    ],
)
def test_a_filtered_exchange_is_freed_without_the_cycle_collector(route_keys: str) -> None:
    """The filters' views point back at their exchange: the exchange drops them
    when it ends, so a filtered request leaves no reference cycle behind."""
    import gc

    from speedproxy.proxy.exchange import Exchange
    from speedproxy.testing import InMemoryProxy

    proxy = InMemoryProxy(
        "backends: {default: [{id: b1, host: 10.1.0.1, port: 8081}]}\n"
        "routing: {default: {path: /, upstream: default, %s}}\n" % route_keys
    )
    client = proxy.client()
    request = b"GET /x HTTP/1.1\r\nHost: h\r\nOrigin: https://a.example\r\nAccept-Encoding: gzip\r\n\r\n"
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: max-age=60\r\n"
        b"Content-Length: 2000\r\n\r\n" + b"{}" * 1000
    )
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        client.send(request)
        backend = proxy.accept()
        backend.send(answer)
        client.send(request)  # (a cache hit on the cached route)
        if backend.received().count(b"GET ") == 2:
            backend.send(answer)
        assert [r.status for r in client.responses()] == [200, 200]
        gc.collect()
        leaked = [item for item in gc.garbage if isinstance(item, Exchange)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not leaked
