"""Node registration against a real ``redis-server``."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from speedproxy.cluster.address import parse_redis_address
from speedproxy.cluster.link import RedisLink
from speedproxy.cluster.nodes import NodeRegistry
from speedproxy.testing.redis import RedisServer

from cluster_fixtures import reactor


class Time:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_twisted.inlineCallbacks
def test_nodes_register_list_and_leave(redis: RedisServer) -> Any:
    link = RedisLink(reactor(), parse_redis_address(redis.url), timeout=0.5)
    yield link.start()
    clock = Time()
    try:
        a = NodeRegistry(link, "t:", "edge-a", 1.0, lambda: {"admin": "127.0.0.1:1"}, clock=clock)
        b = NodeRegistry(link, "t:", "edge-b", 1.0, lambda: {"admin": "127.0.0.1:2"}, clock=clock)
        assert (yield a.beat()) == 1
        clock.now += 0.5
        assert (yield b.beat()) == 2
        nodes = yield a.nodes()
        assert [(n["name"], n["admin"], n["self"]) for n in nodes] == [("edge-a", "127.0.0.1:1", True),
                                                                      ("edge-b", "127.0.0.1:2", False)]
        assert nodes[0]["age_seconds"] == 0.5 and nodes[1]["age_seconds"] == 0.0
        assert 0 < redis.command("PTTL", "t:node:edge-a") <= 3000  # three beats
        yield b.leave()
        assert [n["name"] for n in (yield a.nodes())] == ["edge-a"]
        # A node whose key expired (it stopped beating) leaves the set when listed.
        yield link.call("ZADD", "t:nodes", 1, "ghost")
        assert [n["name"] for n in (yield a.nodes())] == ["edge-a"]
        assert redis.command("ZRANGE", "t:nodes", 0, -1) == [b"edge-a"]
    finally:
        link.stop()


@pytest_twisted.inlineCallbacks
def test_a_name_used_twice_is_logged_once(redis: RedisServer) -> Any:
    from twisted.logger import globalLogPublisher

    seen = []
    observer = seen.append
    globalLogPublisher.addObserver(observer)
    link = RedisLink(reactor(), parse_redis_address(redis.url), timeout=0.5)
    yield link.start()
    try:
        first = NodeRegistry(link, "t:", "same", 1.0, dict)
        second = NodeRegistry(link, "t:", "same", 1.0, dict)
        yield first.beat()
        yield second.beat()
        yield first.beat()
        yield second.beat()
        clashes = [e for e in seen if "also calls itself" in str(e.get("log_format", ""))]
        assert len(clashes) == 2  # once per node
    finally:
        globalLogPublisher.removeObserver(observer)
        link.stop()
