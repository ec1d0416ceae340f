"""Splice moves exactly one body between two real TCP transports and hands them back.

splice(2) needs real file descriptors, so these tests use sockets on
127.0.0.1 and a private epoll reactor (with the workers' lean dispatch),
iterated by hand with bounded waits.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any, Callable, List, Optional, Tuple

import pytest
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from zope.interface import implementer

from speedproxy.proxy import splicing
from speedproxy.proxy.splicing import (
    ISpliceOwner,
    PipePool,
    Splice,
    nothing_queued,
    plain_tcp,
    splice_supported,
)

pytestmark = pytest.mark.skipif(not splice_supported(), reason="needs splice(2) (Linux)")

KiB = 1024


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: List[Any] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.append(reason)


@implementer(ISpliceOwner)
class Owner:
    """Records the callbacks (the real owner is the upstream connection)."""

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.blocked = 0
        self.unblocked = 0
        self.overrun = 0
        self.done = 0

    def splice_received(self, size: int) -> None:
        self.received += size

    def splice_sent(self, size: int) -> None:
        self.sent += size

    def splice_blocked(self) -> None:
        self.blocked += 1

    def splice_unblocked(self) -> None:
        self.unblocked += 1

    def splice_overrun(self) -> None:
        self.overrun += 1

    def splice_done(self) -> None:
        self.done += 1


class Pair:
    """backend socket -> [source transport] proxy [sink transport] -> client socket."""

    def __init__(self) -> None:
        from twisted.internet.epollreactor import EPollReactor

        from speedproxy.worker.reactor import install_lean_reactor

        self.reactor = EPollReactor()
        install_lean_reactor(self.reactor)
        # The backend: a plain listening socket; the proxy connects to it.
        self.backend_listener = socket.socket()
        self.backend_listener.bind(("127.0.0.1", 0))
        self.backend_listener.listen(1)
        self.source_protocol = Recorder()
        factory = ClientFactory.forProtocol(lambda: self.source_protocol)  # type: ignore[arg-type]
        self.reactor.connectTCP("127.0.0.1", self.backend_listener.getsockname()[1], factory)
        self.backend_listener.setblocking(False)
        accepted: List[socket.socket] = []

        def accept() -> bool:
            try:
                accepted.append(self.backend_listener.accept()[0])
            except BlockingIOError:
                return False
            return True

        self.run_until(accept)
        self.backend = accepted[0]
        self.backend.setblocking(False)
        # The client: connects to a Twisted listener.
        self.sink_protocol = Recorder()
        self.port = self.reactor.listenTCP(
            0, Factory.forProtocol(lambda: self.sink_protocol), interface="127.0.0.1"  # type: ignore[arg-type]
        )
        self.client = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.client.setblocking(False)
        self.run_until(lambda: self.source_protocol.transport is not None and self.sink_protocol.transport is not None)
        self.source = self.source_protocol.transport
        self.sink = self.sink_protocol.transport
        self.pipes = PipePool()
        self.owner = Owner()

    def splice(self, length: int) -> Splice:
        pipe = self.pipes.get()
        assert pipe is not None
        return Splice(self.source, self.sink, length, self.owner, self.pipes, pipe)

    def run_until(self, predicate: Callable[[], Any], timeout: float = 10.0, read_client: Optional[bytearray] = None) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            self.reactor.iterate(0.005)
            if read_client is not None:
                self.read_client(read_client)

    def read_client(self, into: bytearray, limit: int = 1 << 20) -> None:
        try:
            data = self.client.recv(limit)
        except BlockingIOError:
            return
        into += data

    def send_backend(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.backend.send(view)
            except BlockingIOError:
                self.reactor.iterate(0.001)
                continue
            view = view[sent:]

    def feed_until_blocked(self, body: bytes, timeout: float = 10.0) -> int:
        """Small socket buffers, nobody reading the client: feed the backend
        until the splice waits for the client; return the bytes sent."""
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * KiB)
        self.sink.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * KiB)
        sent = 0
        deadline = time.monotonic() + timeout
        while not self.owner.blocked:
            assert time.monotonic() < deadline, "the splice never waited for the client"
            try:
                sent += self.backend.send(body[sent : sent + 64 * KiB])
            except BlockingIOError:
                pass
            self.reactor.iterate(0.001)
        return sent

    def close(self) -> None:
        for sock in (self.backend, self.client, self.backend_listener):
            sock.close()
        for transport in (self.source, self.sink):
            if transport.connected:
                transport.abortConnection()
        self.port.stopListening()
        for _ in range(5):
            self.reactor.iterate(0)
        self.pipes.close()


def _implementations() -> List[str]:
    return (["os.splice"] if hasattr(os, "splice") else []) + ["cffi", "ctypes"]


@pytest.fixture(params=_implementations())
def implementation(request, monkeypatch) -> str:
    """Run each test with os.splice and with the libc fallbacks (PyPy, Python 3.9)."""
    if request.param == "os.splice":
        monkeypatch.setattr(splicing, "_splice", os.splice)
        return request.param
    if request.param == "ctypes":
        monkeypatch.setitem(sys.modules, "cffi", None)  # import cffi -> ImportError
    else:
        pytest.importorskip("cffi")
    fallback = splicing._libc_splice()
    assert fallback is not None
    monkeypatch.setattr(splicing, "_splice", fallback)
    return request.param


@pytest.fixture
def pair(implementation: str):
    made = Pair()
    yield made
    made.close()


def _body(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def test_transports_are_plain_tcp_with_nothing_queued(pair: Pair) -> None:
    assert plain_tcp(pair.source) and plain_tcp(pair.sink)
    assert nothing_queued(pair.sink)
    assert not plain_tcp(object())


def test_moves_exactly_the_body_and_hands_the_transports_back(pair: Pair) -> None:
    body = _body(300 * KiB)
    pair.send_backend(body + b"NEXT RESPONSE")
    splice = pair.splice(len(body))
    received = bytearray()
    splice.start()
    pair.run_until(lambda: pair.owner.done, read_client=received)
    pair.run_until(lambda: len(received) >= len(body), read_client=received)
    assert bytes(received) == body
    assert pair.owner.received == pair.owner.sent == len(body)
    assert "doRead" not in pair.source.__dict__ and "doWrite" not in pair.sink.__dict__
    # The bytes after the body are left for the next response, read as usual.
    pair.run_until(lambda: pair.source_protocol.data == b"NEXT RESPONSE")
    assert pair.owner.overrun == 0
    assert pair.pipes.in_use == 0 and len(pair.pipes._idle) == 1


def test_body_arriving_in_pieces(pair: Pair) -> None:
    body = _body(200 * KiB)
    splice = pair.splice(len(body))
    splice.start()
    received = bytearray()
    for offset in range(0, len(body), 7 * KiB):
        pair.send_backend(body[offset : offset + 7 * KiB])
        pair.reactor.iterate(0)
        pair.read_client(received)
    pair.run_until(lambda: pair.owner.done and len(received) == len(body), read_client=received)
    assert bytes(received) == body


def test_a_slow_client_blocks_then_gets_every_byte(pair: Pair) -> None:
    body = _body(4 * 1024 * KiB)
    splice = pair.splice(len(body))
    splice.start()
    received = bytearray()
    sent = pair.feed_until_blocked(body)
    deadline = time.monotonic() + 10
    assert "doWrite" in pair.sink.__dict__  # waiting for the client to drain
    while sent < len(body):
        try:
            sent += pair.backend.send(body[sent : sent + 64 * KiB])
        except BlockingIOError:
            pass
        pair.reactor.iterate(0.001)
        pair.read_client(received)
        assert time.monotonic() < deadline + 10
    pair.run_until(lambda: pair.owner.done and len(received) == len(body), read_client=received)
    assert bytes(received) == body
    assert pair.owner.unblocked >= 1
    assert "doWrite" not in pair.sink.__dict__ and "doRead" not in pair.source.__dict__
    assert pair.source.connected and pair.sink.connected


def test_backend_closing_mid_body_disconnects_it_and_drops_the_pipe(pair: Pair) -> None:
    body = _body(100 * KiB)
    splice = pair.splice(len(body))
    splice.start()
    pair.send_backend(body[: 40 * KiB])
    pair.backend.close()
    received = bytearray()
    pair.run_until(lambda: pair.source_protocol.lost, read_client=received)
    assert not pair.owner.done
    assert not splice.active
    assert pair.pipes.in_use == 0 and not pair.pipes._idle
    assert len(received) <= 40 * KiB
    assert pair.sink.connected  # what happens to the client is the caller's choice


def test_client_gone_aborts_the_client_transport(pair: Pair) -> None:
    pair.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    body = _body(8 * 1024 * KiB)
    splice = pair.splice(len(body))
    splice.start()
    pair.send_backend(body[: 64 * KiB])
    pair.client.close()  # reset
    deadline = time.monotonic() + 10
    sent = 64 * KiB
    while not pair.sink_protocol.lost:
        assert time.monotonic() < deadline, "the client's loss was not noticed"
        try:
            sent += pair.backend.send(body[sent : sent + 64 * KiB])
        except (BlockingIOError, BrokenPipeError):
            pass
        pair.reactor.iterate(0.005)
    assert not pair.owner.done
    assert not splice.active and "doRead" not in pair.source.__dict__
    assert pair.pipes.in_use == 0


def test_cancel_restores_both_transports(pair: Pair) -> None:
    body = _body(2 * 1024 * KiB)
    splice = pair.splice(len(body))
    splice.start()
    pair.feed_until_blocked(body)
    splice.cancel()
    splice.cancel()  # idempotent
    assert not splice.active
    assert "doRead" not in pair.source.__dict__ and "doWrite" not in pair.sink.__dict__
    assert pair.pipes.in_use == 0 and not pair.pipes._idle  # it held data: closed


def test_pipe_pool_reuses_and_bounds_idle_pipes() -> None:
    pool = PipePool(keep=2)
    pipes: List[Tuple[int, int, int]] = [pool.get() for _ in range(3)]  # type: ignore[misc]
    assert all(pipe is not None and pipe[2] >= 64 * KiB for pipe in pipes)
    assert pool.in_use == 3
    for pipe in pipes:
        pool.put(pipe)
    assert pool.in_use == 0 and len(pool._idle) == 2
    with pytest.raises(OSError):
        os.fstat(pipes[2][0])  # the third was closed, not kept
    again = pool.get()
    assert again in pipes[:2]
    pool.put(again)  # type: ignore[arg-type]
    pool.close()
    for pipe in pipes[:2]:
        with pytest.raises(OSError):
            os.fstat(pipe[0])


def test_libc_fallback_reports_errors_like_os_splice(implementation: str) -> None:
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    try:
        a, b = socket.socketpair()
        a.setblocking(False)
        with a, b:
            with pytest.raises(BlockingIOError):  # nothing to read yet
                splicing._splice(a.fileno(), write_end, 100, flags=splicing._FLAGS)  # type: ignore[misc]
            b.send(b"hello")
            assert splicing._splice(a.fileno(), write_end, 100, flags=splicing._FLAGS) == 5  # type: ignore[misc]
            assert os.read(read_end, 10) == b"hello"
        with pytest.raises(OSError):
            splicing._splice(read_end, read_end, 1, flags=splicing._FLAGS)  # type: ignore[misc]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_an_abort_during_the_splice_keeps_twisteds_no_op_handlers(pair: Pair) -> None:
    body = _body(2 * 1024 * KiB)
    splice = pair.splice(len(body))
    splice.start()
    pair.feed_until_blocked(body)
    pair.source.abortConnection()
    pair.sink.abortConnection()
    splice.cancel()
    # Twisted's abort replaced doRead/doWrite with no-ops until connectionLost;
    # the splice must not take those away (a read would revive the socket).
    assert pair.source.__dict__["doRead"]() is None
    assert pair.sink.__dict__["doWrite"]() is None
    pair.run_until(lambda: pair.source_protocol.lost and pair.sink_protocol.lost)


def test_a_closed_pool_closes_pipes_given_back(implementation: str) -> None:
    pool = PipePool()
    pipe = pool.get()
    assert pipe is not None
    pool.close()  # zero_copy turned off while a body was being spliced
    pool.put(pipe)
    assert not pool._idle
    with pytest.raises(OSError):
        os.fstat(pipe[0])


def test_the_upstream_connection_provides_the_owner_interface() -> None:
    from zope.interface.verify import verifyClass

    from speedproxy.proxy.splicing import ISpliceOwner
    from speedproxy.proxy.upstream import UpstreamConnection

    assert verifyClass(ISpliceOwner, UpstreamConnection)


def test_pipe_pool_hands_out_at_most_its_limit(implementation: str) -> None:
    pool = PipePool(limit=2)
    first, second = pool.get(), pool.get()
    assert first is not None and second is not None
    assert pool.get() is None  # the body is copied instead
    pool.put(first)
    again = pool.get()
    assert again == first
    for pipe in (again, second):
        pool.put(pipe)  # type: ignore[arg-type]
    pool.close()
