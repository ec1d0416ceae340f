"""speedproxy.worker.draining: a graceful stop of one data path, in memory."""

from __future__ import annotations

from typing import Any, List

from speedproxy.testing import InMemoryProxy
from speedproxy.worker.draining import drain

GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class FakePort:
    def __init__(self) -> None:
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False


def test_idle_connections_close_at_once_and_in_flight_ones_after_their_response() -> None:
    proxy = InMemoryProxy()
    idle, busy = proxy.client(), proxy.client()
    idle.send(GET)
    backend = proxy.accept()
    backend.send(OK)
    assert idle.response().status == 200 and not idle.closed
    busy.send(GET)
    port = FakePort()
    done: List[Any] = []
    drain(proxy.reactor, proxy.core, [port], grace=30.0).addCallback(done.append)

    assert not port.listening
    assert idle.closed  # keep-alive with nothing in flight: closed now
    assert not busy.closed  # its request is still being answered
    idle.lose()
    assert not done
    backend.send(OK)  # the pooled connection carries the second request
    assert busy.response().status == 200
    assert busy.closed  # closed right after its response
    busy.lose()
    assert done == [None]
    assert backend.transport.disconnecting  # the core stopped and closed its idle pool
    assert not proxy.reactor.getDelayedCalls()  # the grace timer was cancelled


def test_what_is_still_open_after_the_grace_period_is_aborted() -> None:
    proxy = InMemoryProxy()
    stuck = proxy.client()
    stuck.send(GET)
    proxy.accept()  # the backend never answers
    aborted: List[bool] = []
    stuck.transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    done: List[Any] = []
    drain(proxy.reactor, proxy.core, [], grace=5.0).addCallback(done.append)
    proxy.reactor.advance(4.9)
    assert not stuck.closed and not aborted
    proxy.reactor.advance(0.2)
    assert aborted == [True]  # aborted, not closed gracefully behind a request that never ends
    stuck.lose()
    assert done == [None]
