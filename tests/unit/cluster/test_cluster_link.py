"""The link against a real ``redis-server`` (and a Sentinel pair for failover)."""

from __future__ import annotations

from typing import Any, List

import pytest
import pytest_twisted

from speedproxy.cluster.address import parse_redis_address
from speedproxy.cluster.link import RedisDown, RedisLink
from speedproxy.testing.redis import RedisSentinel, RedisServer, wait_for_replica

from cluster_fixtures import reactor, until


@pytest_twisted.inlineCallbacks
def test_commands_and_pubsub(redis: RedisServer) -> Any:
    link = RedisLink(reactor(), parse_redis_address(redis.url), timeout=1.0)
    got: List[bytes] = []
    link.subscribe("chan", got.append)
    yield link.start()
    try:
        assert link.up and link.server == f"127.0.0.1:{redis.port}"
        assert b"name=speedproxy " in redis.command("CLIENT", "LIST")
        assert (yield link.call("SET", "k", "v")) in ("OK", b"OK")
        assert (yield link.call("GET", "k")) == b"v"
        assert (yield link.publish("chan", b"hello")) == 1
        yield until(lambda: got == [b"hello"])
    finally:
        link.stop()


@pytest_twisted.inlineCallbacks
def test_down_fails_at_once_and_comes_back(redis: RedisServer) -> Any:
    link = RedisLink(reactor(), parse_redis_address(redis.url), timeout=0.5, retry=0.1)
    changes: List[bool] = []
    link.on_change(changes.append)
    got: List[bytes] = []
    link.subscribe("chan", got.append)
    yield link.start()
    try:
        redis.kill()
        yield until(lambda: not link.up)
        started = reactor().seconds()
        with pytest.raises(RedisDown):
            yield link.call("GET", "k")
        assert reactor().seconds() - started < 0.1
        redis.start()
        yield until(lambda: link.up)
        assert changes == [True, False, True]
        assert (yield link.call("PING")) in ("PONG", b"PONG")
        yield link.publish("chan", b"again")
        yield until(lambda: got == [b"again"])
    finally:
        link.stop()


@pytest_twisted.inlineCallbacks
def test_unreachable_at_start() -> Any:
    from speedproxy.testing import free_port

    link = RedisLink(reactor(), parse_redis_address(f"redis://127.0.0.1:{free_port()}/0"), timeout=0.5, retry=0.1)
    yield link.start()
    try:
        assert not link.up and "refused" in link.last_error.lower()
        with pytest.raises(RedisDown):
            yield link.call("PING")
    finally:
        link.stop()


@pytest.fixture
def sentinel_pair(redis: RedisServer) -> Any:
    replica = RedisServer("replica").start(replica_of=redis.port)
    sentinel = None
    try:
        wait_for_replica(redis)
        sentinel = RedisSentinel(redis.port).start()
        yield redis, replica, sentinel
    finally:
        if sentinel is not None:
            sentinel.cleanup()
        replica.cleanup()


@pytest_twisted.inlineCallbacks
def test_sentinel_failover(sentinel_pair: Any) -> Any:
    master, replica, sentinel = sentinel_pair
    address = parse_redis_address(f"sentinel://127.0.0.1:{sentinel.port}/{sentinel.service}/0")
    link = RedisLink(reactor(), address, timeout=0.5, retry=0.1)
    yield link.start()
    try:
        assert link.up and link.server == f"127.0.0.1:{master.port}"
        yield link.call("SET", "k", "kept")
        yield until(lambda: replica.command("GET", "k") == b"kept")
        master.kill()
        yield until(lambda: link.server == f"127.0.0.1:{replica.port}" and link.up, timeout=30)
        assert (yield link.call("GET", "k")) == b"kept"
        assert (yield link.call("SET", "k2", "v")) in ("OK", b"OK")
    finally:
        link.stop()


@pytest_twisted.inlineCallbacks
def test_a_hung_redis_counts_as_down_after_the_timeout(redis: RedisServer) -> Any:
    import signal

    link = RedisLink(reactor(), parse_redis_address(redis.url), timeout=0.3, retry=0.1)
    yield link.start()
    try:
        assert link.up
        redis.process.send_signal(signal.SIGSTOP)
        started = reactor().seconds()
        with pytest.raises(RedisDown):
            yield link.call("GET", "k")
        assert 0.25 <= reactor().seconds() - started < 2.0 and not link.up
        with pytest.raises(RedisDown):  # at once now
            yield link.call("GET", "k")
        redis.process.send_signal(signal.SIGCONT)
        yield until(lambda: link.up)
        assert (yield link.call("PING")) in ("PONG", b"PONG")
    finally:
        redis.process.send_signal(signal.SIGCONT)
        link.stop()


@pytest_twisted.inlineCallbacks
def test_a_server_that_never_answers_is_not_redis() -> Any:
    import socket as sockets

    listener = sockets.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    link = RedisLink(reactor(), parse_redis_address(f"redis://127.0.0.1:{port}/0"), timeout=0.2, retry=0.1)
    try:
        started = reactor().seconds()
        yield link.start()
        assert not link.up and reactor().seconds() - started < 2.0
    finally:
        link.stop()
        listener.close()
