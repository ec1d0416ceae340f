"""The lean event dispatch keeps Twisted's error handling."""

from __future__ import annotations

from typing import Any, List

from twisted.python import log

from speedproxy.worker.reactor import _LeanLog, install_lean_dispatch


class Selectable:
    def logPrefix(self) -> str:
        return "selectable"


def test_calls_through_and_returns_the_result() -> None:
    assert _LeanLog.callWithLogger(Selectable(), lambda a, b=0: a + b, 1, b=2) == 3


def test_an_exception_is_logged_not_raised() -> None:
    seen: List[Any] = []
    log.addObserver(seen.append)
    try:
        def boom() -> None:
            raise ValueError("broken handler")

        assert _LeanLog.callWithLogger(Selectable(), boom) is None
    finally:
        log.removeObserver(seen.append)
    assert any(event.get("isError") and "broken handler" in str(event.get("failure")) for event in seen)


def test_other_log_names_still_resolve() -> None:
    assert _LeanLog().msg is log.msg


def test_install_is_idempotent() -> None:
    from twisted.internet import epollreactor

    original = epollreactor.log
    try:
        assert install_lean_dispatch()
        assert install_lean_dispatch()
        assert isinstance(epollreactor.log, _LeanLog)
    finally:
        epollreactor.log = original


def test_lean_reactor_reads_echoes_and_sees_the_close() -> None:
    """A real epoll reactor instance (not the global one) with the direct read path."""
    import socket
    import time

    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.protocol import Factory, Protocol

    from speedproxy.worker.reactor import install_lean_reactor

    reactor = EPollReactor()
    assert install_lean_reactor(reactor)
    lost: List[Any] = []

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

        def connectionLost(self, reason: Any = None) -> None:
            lost.append(reason)

    port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
    try:
        client.setblocking(False)
        client.sendall(b"ping")
        received = b""
        deadline = time.monotonic() + 5
        while received != b"ping" and time.monotonic() < deadline:
            reactor.iterate(0.01)
            try:
                received += client.recv(100)
            except BlockingIOError:
                pass
        assert received == b"ping"
        client.close()
        while not lost and time.monotonic() < deadline:
            reactor.iterate(0.01)
        assert lost, "the close was not noticed"
    finally:
        client.close()
        port.stopListening()
        reactor.iterate(0)


def test_lean_reactor_refuses_other_reactors() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from speedproxy.worker.reactor import install_lean_reactor

    assert not install_lean_reactor(MemoryReactorClock())
