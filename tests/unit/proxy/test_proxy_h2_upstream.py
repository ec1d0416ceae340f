"""The HTTP/2 upstream pool in memory: multiplexing, capacity, GOAWAY, failures, flow control, idling."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset, WindowUpdated
from h2.settings import SettingCodes
from hyperframe.frame import GoAwayFrame
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from speedproxy.proxy.h2_upstream import STREAM_WINDOW, H2UpstreamPool, IUpstreamStream

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/s/M"), (b":authority", b"b")]


@implementer(IUpstreamStream)
class Owner:
    """Records what the pool tells it; opens its stream when the connection is ready."""

    def __init__(self, end_stream: bool = True) -> None:
        self.end_stream = end_stream
        self.connection: Any = None
        self.stream_id = 0
        self.told: List[Tuple[str, Any]] = []
        #: What asks the pool again when told to (upstream_moved).
        self.again: Any = None

    def upstream_ready(self, connection: Any) -> None:
        self.connection = connection
        self.stream_id = connection.start_stream(self, REQUEST, self.end_stream)
        self.told.append(("ready", self.stream_id))

    def upstream_failed(self, reason: str) -> None:
        self.told.append(("failed", reason))

    def upstream_moved(self) -> None:
        self.told.append(("moved", None))
        self.again()

    def response_head(self, headers: Any, ended: bool) -> None:
        self.told.append(("head", (dict(headers)[b":status"], ended)))

    def response_data(self, data: bytes, flow_length: int) -> None:
        self.told.append(("data", data))

    def response_trailers(self, headers: Any) -> None:
        self.told.append(("trailers", dict(headers)))

    def response_ended(self) -> None:
        self.told.append(("ended", None))

    def upstream_reset(self, code: int) -> None:
        self.told.append(("reset", code))

    def upstream_lost(self, reason: str) -> None:
        self.told.append(("lost", reason))

    def upstream_window_opened(self) -> None:
        self.told.append(("window", None))

    def kinds(self) -> List[str]:
        """What it was told, window updates aside."""
        return [kind for kind, _ in self.told if kind != "window"]


class Backend:
    """The server end of one upstream connection (h2, server side)."""

    def __init__(self, reactor: MemoryReactorClock, index: int, settings: Optional[dict] = None) -> None:
        host, port, factory, _, _ = reactor.tcpClients[index]
        self.protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, port), lenient=True)
        self.protocol.makeConnection(self.transport)
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.events: List[Any] = []
        self.send()
        self.pump()

    def send(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.protocol.dataReceived(data)

    def pump(self) -> List[Any]:
        data = self.transport.value()
        self.transport.clear()
        new = self.h2.receive_data(data) if data else []
        self.events += new
        self.send()
        return new

    def requests(self) -> List[int]:
        return [event.stream_id for event in self.events if isinstance(event, RequestReceived)]

    def answer(self, stream_id: int, body: bytes = b"", status: bytes = b"0") -> None:
        self.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        if body:
            self.h2.send_data(stream_id, body)
        self.h2.send_headers(stream_id, [(b"grpc-status", status)], end_stream=True)
        self.send()


def make_pool(**kwargs: Any) -> Tuple[MemoryReactorClock, H2UpstreamPool]:
    reactor = MemoryReactorClock()
    return reactor, H2UpstreamPool(reactor, connect_timeout=5.0, idle_timeout=30.0, **kwargs)


def test_owner_interface() -> None:
    assert verifyObject(IUpstreamStream, Owner())


def test_streams_wait_for_the_connection_then_share_it() -> None:
    reactor, pool = make_pool()
    owners = [Owner() for _ in range(3)]
    for owner in owners:
        pool.open_stream("h2c", "10.0.0.1", 50051, owner)
    assert len(reactor.tcpClients) == 1 and pool.opened == 1
    assert reactor.tcpClients[0][:2] == ("10.0.0.1", 50051)
    assert all(owner.told == [] for owner in owners)  # not connected yet
    backend = Backend(reactor, 0)
    assert [owner.stream_id for owner in owners] == [1, 3, 5]
    assert backend.requests() == [1, 3, 5]
    backend.answer(3, b"\0\0\0\0\x02hi")
    assert [said for said in owners[1].told if said[0] != "window"][1:] == [
        ("head", (b"200", False)),
        ("data", b"\0\0\0\0\x02hi"),
        ("trailers", {b"grpc-status": b"0"}),
        ("ended", None),
    ]
    assert owners[0].kinds() == ["ready"]
    # A fourth stream joins the open connection.
    late = Owner()
    pool.open_stream("h2c", "10.0.0.1", 50051, late)
    assert late.stream_id == 7 and len(reactor.tcpClients) == 1


def test_a_full_connection_makes_another() -> None:
    reactor, pool = make_pool()
    first = Owner()
    pool.open_stream("h2c", "10.0.0.1", 50051, first)
    backend = Backend(reactor, 0, {SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    second = Owner()
    pool.open_stream("h2c", "10.0.0.1", 50051, second)
    assert len(reactor.tcpClients) == 1 and second.stream_id == 3
    third = Owner()
    pool.open_stream("h2c", "10.0.0.1", 50051, third)
    assert len(reactor.tcpClients) == 2 and third.told == []
    Backend(reactor, 1)
    assert third.stream_id == 1
    # Once a stream of the first connection ends, it has room again.
    backend.answer(1)
    fourth = Owner()
    pool.open_stream("h2c", "10.0.0.1", 50051, fourth)
    assert len(reactor.tcpClients) == 2 and fourth.connection is first.connection


def test_the_pool_caps_streams_per_connection() -> None:
    reactor, pool = make_pool(max_streams=2)
    for _ in range(5):
        pool.open_stream("h2c", "10.0.0.1", 50051, Owner())
    assert len(reactor.tcpClients) == 3


def test_refused_connection_fails_every_waiting_owner() -> None:
    reactor, pool = make_pool()
    owners = [Owner(), Owner()]
    for owner in owners:
        pool.open_stream("h2c", "10.0.0.1", 50051, owner)
    _, _, factory, _, _ = reactor.tcpClients[0]
    factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert [owner.told for owner in owners] == [[("failed", "connection refused")]] * 2
    assert pool.connections() == []
    pool.open_stream("h2c", "10.0.0.1", 50051, Owner())
    assert len(reactor.tcpClients) == 2  # the next call tries again


def test_lost_connection_tells_open_streams() -> None:
    reactor, pool = make_pool()
    owner = Owner(end_stream=False)
    pool.open_stream("h2c", "10.0.0.1", 50051, owner)
    backend = Backend(reactor, 0)
    backend.protocol.connectionLost(Failure(ConnectionLost()))
    assert owner.kinds() == ["ready", "lost"]
    assert pool.connections() == []


def test_goaway_refuses_only_the_streams_it_did_not_take() -> None:
    reactor, pool = make_pool()
    kept, refused = Owner(), Owner()
    pool.open_stream("h2c", "10.0.0.1", 50051, kept)
    pool.open_stream("h2c", "10.0.0.1", 50051, refused)
    backend = Backend(reactor, 0)
    # Written past the test's h2 state machine, which would send nothing more after it.
    backend.protocol.dataReceived(GoAwayFrame(0, last_stream_id=1, error_code=0).serialize())
    assert refused.told[-1] == ("reset", ErrorCodes.REFUSED_STREAM)
    assert kept.kinds() == ["ready"]
    # No new stream goes to the closing connection...
    later = Owner()
    pool.open_stream("h2c", "10.0.0.1", 50051, later)
    assert len(reactor.tcpClients) == 2
    # ...and the one it took still completes, then the connection closes.
    backend.pump()
    backend.answer(1, b"\0\0\0\0\x01x")
    assert kept.kinds()[-1] == "ended"
    assert backend.transport.disconnecting


def test_flow_control_both_ways() -> None:
    reactor, pool = make_pool()
    owner = Owner(end_stream=False)
    pool.open_stream("h2c", "10.0.0.1", 50051, owner)
    backend = Backend(reactor, 0)
    connection = owner.connection
    # Request data: only what the backend's window allows goes.
    sent = connection.send_data(owner.stream_id, b"x" * 100_000)
    assert sent == 65535
    got = sum(event.flow_controlled_length for event in backend.pump() if isinstance(event, DataReceived))
    assert got == 65535
    backend.h2.acknowledge_received_data(got, owner.stream_id)
    backend.send()
    assert ("window", None) in owner.told
    assert connection.send_data(owner.stream_id, b"x" * (100_000 - sent)) == 100_000 - sent
    # Response data: the backend's window is ours to give back.
    backend.h2.send_headers(owner.stream_id, [(b":status", b"200")])
    for _ in range(12):
        backend.h2.send_data(owner.stream_id, b"y" * 16384)
    backend.send()
    assert backend.h2.local_flow_control_window(owner.stream_id) == STREAM_WINDOW - 12 * 16384
    backend.pump()
    assert backend.h2.local_flow_control_window(owner.stream_id) == STREAM_WINDOW - 12 * 16384  # not yet
    connection.acknowledge(owner.stream_id, 12 * 16384)
    events = backend.pump()
    assert any(isinstance(event, WindowUpdated) and event.stream_id == owner.stream_id for event in events)
    assert backend.h2.local_flow_control_window(owner.stream_id) == STREAM_WINDOW


def test_cancel_resets_the_stream() -> None:
    reactor, pool = make_pool()
    owner = Owner(end_stream=False)
    pool.open_stream("h2c", "10.0.0.1", 50051, owner)
    backend = Backend(reactor, 0)
    owner.connection.cancel(owner.stream_id)
    resets = [event for event in backend.pump() if isinstance(event, StreamReset)]
    assert [(event.stream_id, event.error_code) for event in resets] == [(1, ErrorCodes.CANCEL)]
    assert owner.connection.streams == {}


def test_idle_connections_close_after_the_idle_timeout() -> None:
    reactor, pool = make_pool()
    owner = Owner()
    pool.open_stream("h2c", "10.0.0.1", 50051, owner)
    backend = Backend(reactor, 0)
    backend.answer(1)
    assert owner.kinds()[-1] == "ended"
    reactor.advance(29)
    assert not backend.transport.disconnecting
    reactor.advance(1)
    assert backend.transport.disconnecting
    assert pool.connections() == []


def test_a_stream_in_use_keeps_the_connection_open() -> None:
    reactor, pool = make_pool()
    owner = Owner(end_stream=False)
    pool.open_stream("h2c", "10.0.0.1", 50051, owner)
    backend = Backend(reactor, 0)
    reactor.advance(300)
    assert not backend.transport.disconnecting
    assert any(isinstance(event, RequestReceived) for event in backend.events)
    assert not any(isinstance(event, StreamEnded) for event in backend.events)


def test_h2_backends_are_reached_over_tls_with_alpn() -> None:
    reactor, pool = make_pool(tls_options_for=lambda host: ("tls", host))
    pool.open_stream("h2", "api.example", 443, Owner())
    assert reactor.tcpClients == []
    host, port, _, options, timeout, _ = reactor.sslClients[0]
    assert (host, port, options, timeout) == ("api.example", 443, ("tls", "api.example"), 5.0)


def test_close_backend_closes_its_connections() -> None:
    reactor, pool = make_pool()
    pool.open_stream("h2c", "10.0.0.1", 50051, Owner())
    pool.open_stream("h2c", "10.0.0.2", 50051, Owner())
    first, second = Backend(reactor, 0), Backend(reactor, 1)
    assert pool.close_backend("10.0.0.1", 50051) == 1
    assert first.transport.disconnecting and not second.transport.disconnecting


def test_late_frames_of_a_cancelled_stream_do_not_break_the_connection() -> None:
    """A backend's trailers that cross our RST_STREAM, arriving once h2 has forgotten
    the stream, are dropped; the other streams go on."""
    reactor, pool = make_pool()
    cancelled, other = Owner(end_stream=False), Owner()
    pool.open_stream("h2c", "10.0.0.1", 50051, cancelled)
    backend = Backend(reactor, 0)
    cancelled.connection.cancel(cancelled.stream_id)
    backend.transport.clear()  # the backend has not read our RST_STREAM yet...
    pool.open_stream("h2c", "10.0.0.1", 50051, other)  # (h2 forgets closed streams meanwhile)
    sent_meanwhile = backend.transport.value()
    backend.transport.clear()
    backend.answer(cancelled.stream_id)  # ...and answers
    backend.transport.write(sent_meanwhile)
    assert not backend.transport.disconnecting
    backend.pump()
    backend.answer(other.stream_id, b"\0\0\0\0\x01y")
    assert other.kinds()[-1] == "ended" and ("data", b"\0\0\0\0\x01y") in other.told
    assert cancelled.kinds() == ["ready"]


def test_an_h2_backend_that_does_not_choose_h2_by_alpn_is_dropped() -> None:
    reactor, pool = make_pool(tls_options_for=lambda host: None)
    owner = Owner()
    pool.open_stream("h2", "api.example", 443, owner)
    host, port, factory, _, _, _ = reactor.sslClients[0]
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 443))
    transport = StringTransport(lenient=True)
    transport.negotiatedProtocol = b"http/1.1"  # type: ignore[attr-defined]
    protocol.makeConnection(transport)
    protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert transport.disconnecting and pool.connections() == []
    protocol.connectionLost(Failure(ConnectionLost()))
    assert owner.kinds() == ["failed"]  # no stream was opened: the call may go to another backend


def test_streams_whose_readers_stall_leave_the_others_their_window() -> None:
    """Every stream of a full connection may hold a whole stream window of answer
    that its client has not read yet (its owner does not acknowledge it): the
    connection's window must still leave the last stream a whole window of its own,
    or stalled calls stop every other call on the connection."""
    reactor, pool = make_pool()
    owners = [Owner() for _ in range(pool.max_streams)]
    for owner in owners:
        pool.open_stream("h2c", "10.0.0.1", 50051, owner)
    assert len(reactor.tcpClients) == 1
    backend = Backend(reactor, 0)
    chunk = b"s" * 16384
    for owner in owners[:-1]:
        backend.h2.send_headers(owner.stream_id, [(b":status", b"200")])
        while backend.h2.local_flow_control_window(owner.stream_id) >= len(chunk):
            backend.h2.send_data(owner.stream_id, chunk)
        backend.send()
        backend.pump()
    last = owners[-1].stream_id
    assert backend.h2.local_flow_control_window(last) == STREAM_WINDOW


def test_streams_wait_for_the_backends_settings_before_they_open() -> None:
    """Calls that waited for the connection open their streams once the backend's
    SETTINGS are known: no more than its MAX_CONCURRENT_STREAMS (a backend that
    enforces it at once, grpc-go or nginx, would refuse the rest: REFUSED_STREAM,
    an UNAVAILABLE for each and a failure counted against the backend); the
    others go to another connection."""
    reactor, pool = make_pool()
    owners = [Owner() for _ in range(3)]
    for owner in owners:
        owner.again = lambda owner=owner: pool.open_stream("h2c", "10.0.0.1", 50051, owner)
        pool.open_stream("h2c", "10.0.0.1", 50051, owner)
    host, port, factory, _, _ = reactor.tcpClients[0]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port), lenient=True)
    protocol.makeConnection(transport)
    assert all(owner.told == [] for owner in owners)  # nothing opened before the backend's SETTINGS
    backend = H2Connection(H2Configuration(client_side=False, header_encoding=None))
    backend.initiate_connection()
    backend.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    protocol.dataReceived(backend.data_to_send())
    events = backend.receive_data(transport.value())
    assert [event.stream_id for event in events if isinstance(event, RequestReceived)] == [1, 3]
    assert [owner.stream_id for owner in owners[:2]] == [1, 3] and owners[2].told == [("moved", None)]
    assert len(reactor.tcpClients) == 2  # the third waits for a connection of its own
    Backend(reactor, 1)
    assert owners[2].stream_id == 1 and owners[2].connection is not owners[0].connection


def test_a_backend_that_sends_no_settings_fails_its_waiting_streams() -> None:
    """A backend that accepts but never speaks HTTP/2 (no SETTINGS within the connect
    timeout) is given up: those waiting are told (and may go to another backend)."""
    reactor, pool = make_pool()
    owner = Owner()
    pool.open_stream("h2c", "10.0.0.1", 50051, owner)
    host, port, factory, _, _ = reactor.tcpClients[0]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port), lenient=True)
    protocol.makeConnection(transport)
    reactor.advance(4.9)
    assert owner.told == []
    reactor.advance(0.2)
    assert owner.told == [("failed", "no HTTP/2 SETTINGS within 5s (not an HTTP/2 server?)")]
    assert transport.disconnecting and pool.connections() == []
    protocol.connectionLost(Failure(ConnectionLost()))
    assert owner.told == [("failed", "no HTTP/2 SETTINGS within 5s (not an HTTP/2 server?)")]
    assert reactor.getDelayedCalls() == [] or all(not call.active() for call in reactor.getDelayedCalls())
