"""The fleet's edge state against a real ``redis-server``: two stores stand for two nodes."""

from __future__ import annotations

from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, maybeDeferred

from speedproxy.cluster.address import parse_redis_address
from speedproxy.cluster.link import RedisLink
from speedproxy.cluster.store import FleetEdgeState
from speedproxy.testing.redis import RedisServer
from speedproxy.edge.host_state import EdgeTable, HostEdgeState
from speedproxy.edge.state import SessionLimitReached, SessionStatus

from cluster_fixtures import reactor, until


def answer(value: Any) -> Deferred:
    return maybeDeferred(lambda: value)


class Node:
    def __init__(self, redis: RedisServer) -> None:
        self.link = RedisLink(reactor(), parse_redis_address(redis.url), timeout=0.5, retry=0.1)
        self.host = HostEdgeState(EdgeTable(None))
        self.store = FleetEdgeState(self.link, self.host, "t:")


@pytest.fixture
def nodes(redis: RedisServer) -> Any:
    made: List[Node] = [Node(redis), Node(redis)]
    yield made
    for node in made:
        node.link.stop()


@pytest_twisted.inlineCallbacks
def start(nodes: List[Node]) -> Any:
    for node in nodes:
        yield node.link.start()
        yield until(lambda node=node: node.store.secret is not None)


@pytest_twisted.inlineCallbacks
def test_one_bucket_for_both_nodes(nodes: List[Node]) -> Any:
    yield start(nodes)
    allowed = 0
    for index in range(40):
        take = yield answer(nodes[index % 2].store.take(b"route\0ip\0198.51.100.7", 0.001, 10))
        allowed += take.allowed
        if not take.allowed:
            assert take.retry_after > 0 and take.remaining == 0
    assert allowed == 10
    other = yield answer(nodes[0].store.take(b"another", 0.001, 10))
    assert other.allowed and other.remaining == 9
    assert nodes[0].store.fallbacks == 0


@pytest_twisted.inlineCallbacks
def test_a_bucket_refills_at_its_rate(nodes: List[Node]) -> Any:
    from twisted.internet.task import deferLater

    yield start(nodes)
    for _ in range(2):
        assert (yield answer(nodes[0].store.take(b"k", 2.0, 2))).allowed
    refused = yield answer(nodes[1].store.take(b"k", 2.0, 2))
    # Unless a whole token came back meanwhile (half a second: a very slow machine).
    assert not refused.allowed and 0 < refused.retry_after <= 0.5
    assert 0.5 < refused.reset <= 1.0
    yield deferLater(reactor(), refused.retry_after + 0.02, lambda: None)
    assert (yield answer(nodes[1].store.take(b"k", 2.0, 2))).allowed


@pytest_twisted.inlineCallbacks
def test_sessions_shared_limited_and_revoked_everywhere(nodes: List[Node]) -> Any:
    yield start(nodes)
    a, b = nodes[0].store, nodes[1].store
    first = yield answer(a.open_session("192.0.2.1", 3600, 2))
    assert first.id.startswith("F")
    second = yield answer(b.open_session("192.0.2.1", 3600, 2))
    with pytest.raises(SessionLimitReached):
        yield answer(a.open_session("192.0.2.1", 3600, 2))
    assert (yield answer(b.check_session(first.id))) == SessionStatus.VALID
    assert (yield answer(a.check_session(second.id))) == SessionStatus.VALID
    listed = yield answer(b.list_sessions("192.0.2.1"))
    assert sorted(s.id for s in listed) == sorted([first.id, second.id])
    assert (yield answer(a.revoke_session(first.id))) is True
    # b trusted first.id a moment ago; the published revocation reaches it at once.
    yield until(lambda: b.check_session(first.id) == SessionStatus.REVOKED, timeout=1.0)
    assert (yield answer(a.revoke_session(first.id))) is False
    # A slot is free again for the client.
    yield answer(b.open_session("192.0.2.1", 3600, 2))
    forged = first.id[:-2] + ("AA" if not first.id.endswith("AA") else "BB")
    assert (yield answer(b.check_session(forged))) == SessionStatus.UNKNOWN


@pytest_twisted.inlineCallbacks
def test_redis_gone_falls_back_to_the_host(nodes: List[Node], redis: RedisServer) -> Any:
    yield start(nodes)
    a = nodes[0].store
    session = yield answer(a.open_session("192.0.2.9", 3600, 5))
    redis.kill()
    yield until(lambda: not nodes[0].link.up)
    take = a.take(b"k", 1.0, 3)
    assert not isinstance(take, Deferred) and take.allowed and take.remaining == 2
    assert a.check_session(session.id) == SessionStatus.VALID
    host_session = a.open_session("192.0.2.9", 3600, 5)
    assert not isinstance(host_session, Deferred) and not host_session.id.startswith("F")
    assert a.check_session(host_session.id) == SessionStatus.VALID
    assert a.fallbacks >= 2
    redis.start()
    yield until(lambda: nodes[0].link.up)
    assert (yield answer(a.take(b"k", 1.0, 3))).allowed


@pytest_twisted.inlineCallbacks
def test_a_worker_that_just_connected_learns_the_secret_before_checking(nodes: List[Node]) -> Any:
    yield start(nodes[:1])
    session = yield answer(nodes[0].store.open_session("192.0.2.3", 60, 1))
    fresh = nodes[1]
    yield fresh.link.start()
    fresh.store.secret = None  # as if the link came up a moment ago
    assert (yield answer(fresh.store.check_session(session.id))) == SessionStatus.VALID


@pytest_twisted.inlineCallbacks
def test_a_session_opens_its_realm_only_and_its_client_when_bound(nodes: List[Node]) -> Any:
    yield start(nodes)
    a, b = nodes[0].store, nodes[1].store
    session = yield answer(a.open_session("192.0.2.1", 3600, 3, "video"))
    assert session.realm == "video"
    assert (yield answer(b.check_session(session.id, "video"))) == SessionStatus.VALID
    assert (yield answer(b.check_session(session.id, "premium"))) == SessionStatus.UNKNOWN
    assert (yield answer(b.check_session(session.id, "video", "192.0.2.1"))) == SessionStatus.VALID
    assert (yield answer(b.check_session(session.id, "video", "198.51.100.9"))) == SessionStatus.UNKNOWN
    assert (yield answer(b.check_session(session.id))) == SessionStatus.VALID  # the admin API asks without a realm


@pytest_twisted.inlineCallbacks
def test_the_same_signed_link_gets_its_live_session_back(nodes: List[Node]) -> Any:
    yield start(nodes)
    a, b = nodes[0].store, nodes[1].store
    first = yield answer(a.open_session("192.0.2.1", 3600, 1, "video", b"exp=1700000600"))
    again = yield answer(b.open_session("192.0.2.1", 3600, 1, "video", b"exp=1700000600"))
    assert again.id == first.id  # no second session, so max_per_client=1 is not reached
    with pytest.raises(SessionLimitReached):
        yield answer(a.open_session("192.0.2.1", 3600, 1, "video", b"exp=1700000999"))
    assert (yield answer(a.revoke_session(first.id))) is True
    fresh = yield answer(b.open_session("192.0.2.1", 3600, 1, "video", b"exp=1700000600"))
    assert fresh.id != first.id  # a revoked session is not handed out again


@pytest_twisted.inlineCallbacks
def test_an_emptied_redis_ends_no_session(nodes: List[Node], redis: RedisServer) -> Any:
    yield start(nodes[:1])
    old = nodes[0].store
    session = yield answer(old.open_session("192.0.2.3", 3600, 3, "video"))
    yield old.link.call("FLUSHALL")
    # A fresh worker reaches the empty Redis first and publishes a new secret.
    fresh = nodes[1]
    yield fresh.link.start()
    yield until(lambda: fresh.store.secret is not None)
    assert fresh.store.secret != old.secret
    # The old worker reconnects: it signs with Redis's secret but keeps accepting its own...
    yield old._load_secret()
    assert old.secret == fresh.store.secret
    assert (yield answer(old.check_session(session.id, "video"))) == SessionStatus.VALID
    # ...and the fresh worker learns it from Redis when it meets an id it cannot verify.
    assert (yield answer(fresh.store.check_session(session.id, "video"))) == SessionStatus.VALID
    new = yield answer(fresh.store.open_session("192.0.2.4", 3600, 3, "video"))
    assert (yield answer(old.check_session(new.id, "video"))) == SessionStatus.VALID
