"""Graceful stop of a data path: stop accepting, finish in-flight, then close."""

from __future__ import annotations

from typing import Any, Iterable

from twisted.internet.defer import Deferred

from speedproxy.proxy.core import ProxyCore


def drain(reactor: Any, core: ProxyCore, ports: Iterable[Any], grace: float) -> Deferred:
    """Stop listening on ``ports`` and let ``core``'s requests finish.

    Idle keep-alive connections are closed at once; a connection with a
    request in flight is closed right after its response.  Whatever is
    still open after ``grace`` seconds is aborted.  The Deferred fires when
    no client connection is left.
    """
    for port in ports:
        port.stopListening()
    for client in list(core.clients):
        client.close_when_idle()
    drained = core.when_no_clients()

    def give_up() -> None:
        for client in list(core.clients):
            client.transport.abortConnection()

    timer = reactor.callLater(grace, give_up)

    def finish(result: object) -> None:
        if timer.active():
            timer.cancel()
        core.stop()

    drained.addCallback(finish)
    return drained
