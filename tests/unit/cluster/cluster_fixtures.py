"""Fixtures starting real Redis processes (see :mod:`speedproxy.testing.redis`), and waiting in the reactor."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from twisted.internet.defer import Deferred

from speedproxy.testing.redis import RedisServer, RedisUnavailable, ensure_redis_server


def redis_binary() -> str:
    """``redis-server``, or the test fails saying why it could not be had."""
    try:
        return ensure_redis_server()
    except RedisUnavailable as error:
        pytest.fail(str(error), pytrace=False)


def running_redis(name: str = "redis") -> Iterator[RedisServer]:
    redis_binary()
    server = RedisServer(name).start()
    try:
        yield server
    finally:
        server.cleanup()


def reactor() -> Any:
    """The global reactor (pytest-twisted runs it), imported when a test needs it."""
    from twisted.internet import reactor

    return reactor


def until(predicate: Any, timeout: float = 10.0) -> Deferred:
    """Fires once ``predicate()`` is true (checked every 20 ms), fails after ``timeout``."""
    from twisted.internet.task import LoopingCall

    done: Deferred = Deferred()
    started = reactor().seconds()

    def check() -> None:
        if predicate():
            loop.stop()
            done.callback(True)
        elif reactor().seconds() - started > timeout:
            loop.stop()
            done.errback(TimeoutError("condition not met in time"))

    loop = LoopingCall(check)
    loop.clock = reactor()
    loop.start(0.02)
    return done
