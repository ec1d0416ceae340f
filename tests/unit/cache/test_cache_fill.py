"""Request coalescing in one worker, in memory (:mod:`speedproxy.cache.fill` through the cache filter)."""

from __future__ import annotations

from speedproxy.testing import IN_MEMORY_CACHED_CONFIG, InMemoryProxy

CONFIG = IN_MEMORY_CACHED_CONFIG

GET = b"GET /obj HTTP/1.1\r\nHost: h\r\n\r\n"


def head(extra: bytes = b"Cache-Control: max-age=60\r\n", length: int = 10) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (length, extra)


def test_concurrent_misses_make_one_origin_request_and_stream_as_it_arrives() -> None:
    proxy = InMemoryProxy(CONFIG)
    clients = [proxy.client() for _ in range(3)]
    for client in clients:
        client.send(GET)
    assert proxy.pending_connects() == 1
    backend = proxy.accept()
    assert backend.received().count(b"GET /obj") == 1
    backend.send(head() + b"01234")
    for client in clients:  # the first half reached everyone before the end
        assert client.received().endswith(b"01234"), client.received()
    backend.send(b"56789")
    statuses = []
    for client in clients:
        response = client.response()
        assert response.body == b"0123456789"
        statuses.append(response.header(b"Cache-Status"))
    assert statuses[0] == b"speedproxy; fwd=miss; fwd-status=200; stored"
    assert statuses[1:] == [b"speedproxy; fwd=miss; fwd-status=200; collapsed"] * 2
    assert proxy.pending_connects() == 0
    # Stored: a new request is a hit, no connection.
    late = proxy.client()
    late.send(GET)
    assert late.response().header(b"Cache-Status").startswith(b"speedproxy; hit; ttl=")
    assert len(proxy.connects) == 1


def test_a_late_follower_gets_what_came_so_far_then_the_rest() -> None:
    proxy = InMemoryProxy(CONFIG)
    first = proxy.client()
    first.send(GET)
    backend = proxy.accept()
    backend.send(head() + b"0123")
    late = proxy.client()
    late.send(GET)
    backend.send(b"456789")
    assert late.response().body == first.response().body == b"0123456789"


def test_an_uncacheable_response_releases_the_waiters_to_the_origin() -> None:
    proxy = InMemoryProxy(CONFIG)
    clients = [proxy.client() for _ in range(3)]
    for client in clients:
        client.send(GET)
    backend = proxy.accept()
    backend.send(head(b"Cache-Control: no-store\r\n") + b"0123456789")
    # The two others went to the origin at once, each on its own.
    assert proxy.pending_connects() == 2
    others = [proxy.accept(), proxy.accept()]
    for other in others:
        other.send(head(b"Cache-Control: no-store\r\n") + b"abcdefghij")
    bodies = sorted(client.response().body for client in clients)
    assert bodies == [b"0123456789", b"abcdefghij", b"abcdefghij"]


def test_a_broken_leader_sends_the_followers_on_alone() -> None:
    proxy = InMemoryProxy(CONFIG)
    leader, follower = proxy.client(), proxy.client()
    leader.send(GET)
    follower.send(GET)
    proxy.accept().close()  # no answer at all (one backend: no other to retry on)
    assert leader.response().status == 502
    assert proxy.pending_connects() == 1  # the follower asks the origin itself
    proxy.accept().send(head() + b"0123456789")
    response = follower.response()
    assert (response.status, response.body) == (200, b"0123456789")


def test_a_follower_that_leaves_is_not_fed() -> None:
    proxy = InMemoryProxy(CONFIG)
    leader, follower = proxy.client(), proxy.client()
    leader.send(GET)
    follower.send(GET)
    follower.lose()
    backend = proxy.accept()
    backend.send(head() + b"0123456789")
    assert leader.response().body == b"0123456789"
