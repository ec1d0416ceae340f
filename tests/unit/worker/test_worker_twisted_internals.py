"""The Twisted internals the data path relies on are still there.

speedproxy reads a few private attributes of Twisted's TCP transports and
epoll reactor on its hot path (proxy/sending.py, proxy/splicing.py,
proxy/sendfile.py, worker/reactor.py, worker/accepting.py).  If a Twisted
release renames them, those modules fall back to slower paths or would
misjudge a transport's queue; this test fails first, naming what changed.
setup.cfg pins Twisted below the next untested release for the same reason.
"""

from __future__ import annotations

import socket

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol

from speedproxy.proxy.splicing import nothing_queued, plain_tcp
from speedproxy.worker.reactor import install_lean_dispatch, install_lean_reactor

#: What proxy/sending.py and splicing.py read to know nothing is queued.
TRANSPORT_INTERNALS = ("_tempDataLen", "dataBuffer", "offset", "_writeDisconnected", "connected", "disconnecting")


@pytest.fixture
def server_transport():
    from twisted.internet.epollreactor import EPollReactor

    reactor = EPollReactor()
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, reactor)
    yield transport
    ours.close()
    theirs.close()
    reactor._poller.close()


def test_tcp_transports_keep_the_write_queue_attributes(server_transport) -> None:
    missing = [name for name in TRANSPORT_INTERNALS if not hasattr(server_transport, name)]
    assert not missing, f"Twisted's tcp.Server lost {missing}: update proxy/sending.py and splicing.py"
    assert plain_tcp(server_transport)
    assert nothing_queued(server_transport)
    server_transport.write(b"x" * 10)  # buffered by Twisted until the reactor writes it
    assert not nothing_queued(server_transport), "a queued write is no longer seen in dataBuffer/_tempDataLen"


def test_tcp_transports_expose_their_socket(server_transport) -> None:
    # sending.py sends straight to it; sendfile.py sends the head with MSG_MORE.
    assert isinstance(server_transport.socket, socket.socket)


def test_the_epoll_reactor_takes_the_lean_dispatch() -> None:
    from twisted.internet.epollreactor import EPollReactor

    reactor = EPollReactor()
    try:
        for name in ("_poller", "_selectables", "_doReadOrWrite"):
            assert hasattr(reactor, name), f"EPollReactor lost {name}: update worker/reactor.py"
        assert install_lean_reactor(reactor), "worker/reactor.py no longer installs its direct read path"
        assert install_lean_dispatch()
    finally:
        reactor._poller.close()


def test_listening_ports_keep_number_accepts() -> None:
    # worker/accepting.py bounds the accepts of one wake-up through it.
    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.protocol import Factory

    reactor = EPollReactor()
    port = tcp.Port(0, Factory.forProtocol(Protocol), interface="127.0.0.1", reactor=reactor)
    try:
        port.startListening()
        assert isinstance(getattr(port, "numberAccepts", None), int), (
            "tcp.Port lost numberAccepts: update worker/accepting.py"
        )
    finally:
        port.socket.close()
        reactor._poller.close()
