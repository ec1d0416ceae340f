"""The upstream side in memory: pool, connect failures, retries, timeouts, backpressure."""

from __future__ import annotations

from twisted.internet.error import ConnectionLost, TimeoutError

from speedproxy.proxy.upstream import SURPLUS_KEEPALIVE

GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

TWO_BACKENDS = """\
backends:
  default:
    - {id: b1, host: 10.1.0.1, port: 8081}
    - {id: b2, host: 10.1.0.2, port: 8082}
routing:
  default: {path: /, upstream: default, load_balancer: round_robin}
"""


# -- backpressure ----------------------------------------------------------------


def test_slow_client_pauses_the_backend_read(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    assert client.transport.producer is client.protocol
    client.protocol.pauseProducing()  # the client's socket buffer is full
    assert backend.transport.producerState == "paused"
    client.protocol.resumeProducing()
    assert backend.transport.producerState == "producing"
    backend.send(b"56789")
    assert client.response().body == b"0123456789"


def test_backend_paused_by_a_slow_client_is_pooled_reading_again(proxy) -> None:
    """A response that ends while the client is slow must not leave a paused
    connection in the pool: the next request on it would never be read."""
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    client.protocol.pauseProducing()  # the client's buffer is full (TLS, slow reader)
    assert backend.transport.producerState == "paused"
    backend.send(b"56789")  # the response completes into the client's buffer
    assert proxy.core.pool.idle_count() == 1
    assert backend.transport.producerState == "producing"
    client.protocol.resumeProducing()
    assert client.response().body == b"0123456789"
    client.take()
    backend.take()
    other = proxy.client()
    other.send(GET)
    assert len(proxy.connects) == 1  # the pooled connection is reused ...
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert other.response().body == b"ok"  # ... and it is read


def test_new_backend_connection_starts_paused_while_the_client_is_slow(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    client.protocol.pauseProducing()  # still draining the first answer
    client.send(GET)  # the next request on the same connection
    assert backend.transport.producerState == "paused"
    client.protocol.resumeProducing()
    assert backend.transport.producerState == "producing"


def test_slow_backend_pauses_the_client_read(proxy) -> None:
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
    backend = proxy.accept()
    assert backend.transport.producer is backend.protocol
    client.send(b"01234")
    backend.protocol.pauseProducing()  # the backend's socket buffer is full
    assert client.transport.producerState == "paused"
    backend.protocol.resumeProducing()
    assert client.transport.producerState == "producing"
    client.send(b"56789")
    assert backend.received().endswith(b"0123456789")


def test_upstream_pause_during_response_pauses_client(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
    backend.protocol.pauseProducing()
    assert client.transport.producerState == "paused"
    backend.protocol.resumeProducing()
    assert client.transport.producerState == "producing"


def test_pause_reasons_combine(proxy) -> None:
    """Reading resumes only once every reason to pause is gone."""
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
    backend = proxy.accept()
    protocol = client.protocol
    protocol.pause_reading(protocol.PAUSED_DRAINING)
    backend.protocol.pauseProducing()
    backend.protocol.resumeProducing()
    assert client.transport.producerState == "paused"
    protocol.resume_reading(protocol.PAUSED_DRAINING)
    assert client.transport.producerState == "producing"


def test_body_buffered_while_connecting_is_bounded(proxy) -> None:
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 200000\r\n\r\n")
    client.send(b"a" * 70000)  # over the pending limit while still connecting
    assert client.transport.producerState == "paused"
    backend = proxy.accept()
    assert client.transport.producerState == "producing"
    assert backend.received().endswith(b"a" * 70000)


def test_pipelined_flood_pauses_reading(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    client.send(b"X" * 5000)  # more than max_header_size while the first is served
    assert client.transport.producerState == "paused"
    backend = proxy.accept()
    backend.send(OK)
    # The buffered bytes are then parsed: a head over the limit is refused.
    assert client.responses()[-1].status == 431


# -- connect failures and retries ---------------------------------------------------


def test_connect_failure_retried_on_the_other_backend(make_proxy) -> None:
    harness = make_proxy(TWO_BACKENDS)
    client = harness.client()
    client.send(GET)
    harness.refuse()
    assert len(harness.connects) == 2
    assert harness.connects[0] != harness.connects[1]
    backend = harness.accept()
    backend.send(OK)
    assert client.response().status == 200
    first, second = harness.connects
    failed = harness.backend("b1" if first[1] == 8081 else "b2")
    assert failed.failures == 1
    assert failed.active_connections == 0


def test_all_connects_fail_is_502_json(make_proxy) -> None:
    harness = make_proxy(TWO_BACKENDS)
    client = harness.client()
    client.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: rid-7\r\n\r\n")
    harness.refuse()
    harness.refuse()
    assert len(harness.connects) == 2
    response = client.response()
    assert response.status == 502
    assert response.header(b"content-type") == b"application/json"
    body = response.json()
    assert set(body) == {"error", "detail", "request_id"}
    assert body["error"] == "bad_gateway"
    assert body["request_id"] == "rid-7" == response.header(b"x-request-id").decode()
    assert not client.closed
    assert harness.backend("b1").active_connections == harness.backend("b2").active_connections == 0


def test_single_backend_connect_refused_is_502(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    proxy.refuse()
    assert client.response().status == 502
    assert len(proxy.connects) == 1


def test_retry_budget_bounds_attempts(make_proxy) -> None:
    harness = make_proxy(
        """\
        backends:
          default:
            - {id: b1, host: 10.1.0.1, port: 1}
            - {id: b2, host: 10.1.0.2, port: 2}
            - {id: b3, host: 10.1.0.3, port: 3}
            - {id: b4, host: 10.1.0.4, port: 4}
            - {id: b5, host: 10.1.0.5, port: 5}
        routing:
          default: {path: /, upstream: default, load_balancer: round_robin}
        """
    )
    client = harness.client()
    client.send(GET)
    while harness.pending_connects():
        harness.refuse()
    assert len(harness.connects) == harness.core.retries + 1
    assert client.response().status == 502


def test_connect_timeout_is_504(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    assert proxy.reactor.tcpClients[0][3] == 5.0  # upstream_connect_timeout
    proxy.refuse(TimeoutError())
    response = client.response()
    assert response.status == 504
    assert response.json()["error"] == "gateway_timeout"


def test_connect_timeout_after_retry_budget_is_504(make_proxy) -> None:
    harness = make_proxy(
        """\
        backends:
          default:
            - {id: b1, host: 10.1.0.1, port: 1}
            - {id: b2, host: 10.1.0.2, port: 2}
            - {id: b3, host: 10.1.0.3, port: 3}
        routing:
          default: {path: /, upstream: default, load_balancer: round_robin}
        """
    )
    client = harness.client()
    client.send(GET)
    for _ in range(3):
        harness.refuse(TimeoutError())
    assert client.response().status == 504


def test_post_body_streamed_then_connection_lost_is_not_retried(make_proxy) -> None:
    harness = make_proxy(TWO_BACKENDS)
    client = harness.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc")
    backend = harness.accept()
    backend.protocol.connectionLost(ConnectionLost())
    assert len(harness.connects) == 1
    response = client.response()
    assert response.status == 502
    assert response.header(b"connection") == b"close"
    assert client.closed


def test_get_retried_when_backend_closes_without_answer(make_proxy) -> None:
    harness = make_proxy(TWO_BACKENDS)
    client = harness.client()
    client.send(GET)
    first = harness.accept()
    first.close()
    assert len(harness.connects) == 2
    second = harness.accept()
    assert second.received().startswith(b"GET / HTTP/1.1\r\n")
    second.send(OK)
    assert client.response().body == b"hello"


def test_stale_pooled_connection_retried_on_fresh_connection(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(OK)
    client.take()
    backend.take()
    client.send(GET)  # goes out on the pooled connection...
    assert backend.received().startswith(b"GET / ")
    backend.close()  # ...which the backend had already closed
    assert len(proxy.connects) == 2
    fresh = proxy.accept()
    fresh.send(OK)
    assert client.response().status == 200


def test_post_on_stale_pooled_connection_not_retried(make_proxy) -> None:
    harness = make_proxy(TWO_BACKENDS)
    client = harness.client()
    pooled = []
    for _ in range(2):  # round robin: one pooled connection to each backend
        client.send(GET)
        backend = harness.accept()
        backend.send(OK)
        backend.take()
        pooled.append(backend)
    client.take()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    used = [backend for backend in pooled if backend.received()]
    assert len(used) == 1
    used[0].close()
    assert len(harness.connects) == 2  # a POST whose head left is never replayed
    assert client.response().status == 502


def test_inactive_backends_are_503(make_proxy) -> None:
    harness = make_proxy(
        """\
        backends:
          default:
            - {id: b1, host: 10.1.0.1, port: 8081, active: false}
            - {id: b2, host: 10.1.0.2, port: 8082, active: false}
        routing:
          default: {path: /, upstream: default}
        """
    )
    client = harness.client()
    client.send(GET)
    response = client.response()
    assert response.status == 503
    assert response.json()["error"] == "no_backend_available"
    assert harness.connects == []
    assert not client.closed


def test_backend_max_conn_is_503_without_a_queue(make_proxy) -> None:
    # With the default queue it waits instead: see test_proxy_backlog.py.
    harness = make_proxy(
        """\
        server: {queue_timeout: 0s}
        backends:
          default: [{id: b1, host: 10.1.0.1, port: 8081, max_conn: 1}]
        routing:
          default: {path: /, upstream: default}
        """
    )
    first = harness.client()
    first.send(GET)
    second = harness.client()
    second.send(GET)
    assert second.response().status == 503
    harness.accept().send(OK)
    assert first.response().status == 200
    third = harness.client()
    third.send(GET)
    assert len(harness.reactor.tcpClients) == 1  # the freed backend is used again


def test_no_route_is_404(make_proxy) -> None:
    harness = make_proxy(
        """\
        backends:
          default: [{id: b1, host: 10.1.0.1, port: 8081}]
        routing:
          api: {path: /api, upstream: default}
        """
    )
    client = harness.client()
    client.send(b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n")
    response = client.response()
    assert response.status == 404
    assert response.json()["error"] == "no_route"
    assert harness.connects == []
    assert not client.closed
    client.take()
    client.send(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(harness.connects) == 1


# -- timeouts --------------------------------------------------------------------------


def test_upstream_read_timeout_is_504(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    proxy.reactor.advance(59)
    proxy.core.sweeper.sweep()
    assert client.received() == b""
    proxy.reactor.advance(2)
    proxy.core.sweeper.sweep()
    response = client.response()
    assert response.status == 504
    assert response.json()["error"] == "gateway_timeout"
    assert backend.transport.disconnected  # aborted
    assert proxy.core.pool.idle_count() == 0
    assert proxy.backend("b1").active_connections == 0
    assert not client.closed


def test_read_timeout_counts_from_the_end_of_the_body(proxy) -> None:
    client = proxy.client()
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\na")
    backend = proxy.accept()
    proxy.reactor.advance(25)
    client.send(b"b")
    proxy.reactor.advance(50)
    proxy.core.sweeper.sweep()
    assert client.received() == b""
    proxy.reactor.advance(11)
    proxy.core.sweeper.sweep()
    assert client.response().status == 504
    assert backend.transport.disconnected


def test_read_timeout_is_between_bytes(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
    for byte in (b"a", b"b"):
        proxy.reactor.advance(50)
        proxy.core.sweeper.sweep()
        backend.send(byte)
    proxy.reactor.advance(61)
    proxy.core.sweeper.sweep()
    # The head has been relayed: too late for an error, the client is cut off.
    assert client.transport.disconnected
    assert backend.transport.disconnected
    assert b"ab" in client.received()


def test_idle_pooled_connection_closed_after_keepalive_timeout(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(OK)
    assert proxy.core.pool.idle_count() == 1
    proxy.reactor.advance(61)
    proxy.core.sweeper.sweep()
    assert backend.transport.disconnecting
    backend.close()
    assert proxy.core.pool.idle_count() == 0


def test_bytes_from_an_idle_connection_make_it_unusable(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(OK)
    backend.send(b"HTTP/1.1 200 OK\r\n")  # unsolicited
    assert backend.transport.disconnected
    client.take()
    client.send(GET)
    assert len(proxy.connects) == 2


def test_idle_backend_close_removes_it_from_the_pool(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(OK)
    backend.close()
    assert proxy.core.pool.idle_count() == 0
    client.take()
    client.send(GET)
    assert len(proxy.connects) == 2


# -- the client going away ---------------------------------------------------------------


def test_client_lost_mid_response_aborts_upstream(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    client.lose()
    assert backend.transport.disconnected  # abortConnection
    assert proxy.core.pool.idle_count() == 0
    assert proxy.backend("b1").active_connections == 0
    backend.send(b"more")  # late bytes go nowhere
    backend.close()
    assert proxy.core.pool.idle_count() == 0
    assert proxy.core.clients == set()
    assert len(proxy.core.sweeper) == 0


def test_client_lost_while_connecting(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    client.lose()
    assert proxy.backend("b1").active_connections == 0
    backend = proxy.accept()
    assert backend.received() == b""  # nothing is sent for a gone client
    assert client.received() == b""


def test_client_lost_while_waiting_for_the_response(proxy) -> None:
    client = proxy.client()
    client.send(GET)
    backend = proxy.accept()
    client.lose()
    assert backend.transport.disconnected
    assert proxy.core.pool.idle_count() == 0


def two_released_over_a_cap_of_one(make_proxy) -> tuple:
    """Two requests at once with ``upstream_keepalive: 1``: both backend
    connections answered, so the second one is released over the cap."""
    harness = make_proxy(
        """\
        server:
          upstream_keepalive: 1
        backends:
          default: [{id: b1, host: 10.1.0.1, port: 8081}]
        routing:
          default: {path: /, upstream: default}
        """
    )
    clients = [harness.client() for _ in range(2)]
    for client in clients:
        client.send(GET)
    backends = [harness.accept() for _ in range(2)]
    for backend in backends:
        backend.take()
        backend.send(OK)
    return harness, clients, backends


def test_connection_pool_max_idle(make_proxy) -> None:
    harness, clients, backends = two_released_over_a_cap_of_one(make_proxy)
    # Over the cap, the second is kept briefly: a request now reuses it ...
    assert harness.core.pool.idle_count() == 2
    assert not any(b.transport.disconnecting for b in backends)
    clients[0].send(GET)
    assert harness.pending_connects() == 0
    assert backends[1].take().startswith(b"GET / HTTP/1.1")  # the most recent first
    backends[1].send(OK)
    # ... and once the burst is over it is closed within SURPLUS_KEEPALIVE.
    harness.reactor.advance(SURPLUS_KEEPALIVE + 0.1)
    harness.core.sweeper.sweep()
    # The one within the cap keeps its 60 s.
    assert [bool(b.transport.disconnecting) for b in backends] == [False, True]


def test_a_surplus_connection_left_within_the_cap_keeps_the_full_keepalive(make_proxy) -> None:
    harness, _, backends = two_released_over_a_cap_of_one(make_proxy)
    backends[0].close()  # the backend closes the one within the cap
    assert harness.core.pool.idle_count() == 1
    harness.reactor.advance(SURPLUS_KEEPALIVE + 0.1)
    harness.core.sweeper.sweep()
    assert not backends[1].transport.disconnecting  # now the pool's one idle connection
    harness.reactor.advance(60.0)
    harness.core.sweeper.sweep()
    assert backends[1].transport.disconnecting  # until the keep-alive timeout


def test_connection_pool_without_keepalive_closes_at_once(make_proxy) -> None:
    harness = make_proxy(
        """\
        server:
          upstream_keepalive: 0
        backends:
          default: [{id: b1, host: 10.1.0.1, port: 8081}]
        routing:
          default: {path: /, upstream: default}
        """
    )
    harness.client().send(GET)
    backend = harness.accept()
    backend.send(OK)
    assert harness.core.pool.idle_count() == 0
    assert backend.transport.disconnecting


def test_an_expired_idle_connection_is_never_handed_out_while_it_closes(make_proxy) -> None:
    # loseConnection closes at the reactor's next write pass; a request in
    # between must get a fresh connection, not be written to the closing one.
    harness, _, backends = two_released_over_a_cap_of_one(make_proxy)
    harness.reactor.advance(SURPLUS_KEEPALIVE + 0.1)
    harness.core.sweeper.sweep()
    assert backends[1].transport.disconnecting
    harness.client().send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
    assert backends[1].take() == b""
    assert backends[0].take().startswith(b"POST / ")  # the healthy idle one


def test_closing_a_backends_idle_connections_takes_them_out_of_the_pool(make_proxy) -> None:
    harness = make_proxy()
    harness.client().send(GET)
    backend = harness.accept()
    backend.take()
    backend.send(OK)
    assert harness.core.pool.close_backend("10.1.0.1", 8081) == 1
    assert harness.core.pool.idle_count() == 0
    harness.client().send(GET)
    assert backend.take() == b"" and harness.pending_connects() == 1
