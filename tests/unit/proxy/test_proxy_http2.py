"""HTTP/2 client connections in memory: hand-over, streams, flow control, attacks."""

from __future__ import annotations

from collections import deque
from typing import Any, Dict, List, Optional, Tuple

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, Frame, GoAwayFrame, HeadersFrame, SettingsFrame, PingFrame

from speedproxy.proxy.http2 import H2ClientConnection, is_preface, request_head
from speedproxy.proxy.h2_stream import HIGH_WATER
from speedproxy.proxy.http1 import ProtocolError

CONFIG = """
server:
  read_timeout: 10s
  write_timeout: 5s
  idle_timeout: 60s
  max_header_size: 4096
  h2_max_concurrent_streams: 8
backends:
  default: [{id: b1, host: 10.1.0.1, port: 8081}]
routing:
  default: {path: /, upstream: default}
"""


class H2Peer:
    """An HTTP/2 client (the h2 library, client side) on an in-memory proxy connection."""

    def __init__(self, proxy: Any, settings: Optional[Dict[int, int]] = None, split_preface: bool = False) -> None:
        self.proxy = proxy
        self.memory = proxy.client()
        self.transport = self.memory.transport
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        if settings:
            self.h2.update_settings(settings)
        self.events: List[Any] = []
        #: Acknowledge response DATA as it comes (a client that reads).
        self.reading = True
        data = self.h2.data_to_send()
        if split_preface:
            self.memory.send(data[:16])
            self.send_raw(data[16:])
        else:
            self.memory.send(data)
        self.pump()

    @property
    def protocol(self) -> Any:
        return getattr(self.transport, "protocol", self.memory.protocol)

    def send_raw(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.send_raw(data)

    def pump(self) -> List[Any]:
        """Read what the proxy sent; return the new events."""
        self.proxy.reactor.advance(0)  # the writes left for the end of the reactor turn
        data = self.transport.value()
        self.transport.clear()
        new = self.h2.receive_data(data) if data else []
        self.events += new
        if self.reading:
            for event in new:
                if isinstance(event, DataReceived) and event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.flush()
        return new

    def request(
        self, path: str = "/", method: str = "GET", body: bytes = b"", headers: Tuple = (), end: bool = True
    ) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":path", path.encode()), (b":scheme", b"http"),
                  (b":authority", b"example.test")] + list(headers)
        self.h2.send_headers(stream_id, fields, end_stream=end and not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=end)
        self.flush()
        self.pump()
        return stream_id

    def response(self, stream_id: int) -> Tuple[Optional[int], Dict[bytes, bytes], bytes, bool]:
        """(status, headers, body, ended) of one stream so far."""
        status = None
        headers: Dict[bytes, bytes] = {}
        body = b""
        ended = False
        for event in self.events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, ResponseReceived):
                headers = dict(event.headers)
                status = int(headers[b":status"])
            elif isinstance(event, DataReceived):
                body += event.data
            elif isinstance(event, StreamEnded):
                ended = True
        return status, headers, body, ended

    def terminated(self) -> Optional[ConnectionTerminated]:
        for event in self.events:
            if isinstance(event, ConnectionTerminated):
                return event
        return None

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


def frames(data: bytes) -> List[Any]:
    """The frames in bytes a server sent."""
    found = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        found.append(frame)
        data = data[9 + length :]
    return found


@pytest.fixture
def proxy(make_proxy):
    return make_proxy(CONFIG)


def answer(backend, body: bytes = b"hello", extra: bytes = b"") -> None:
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n%s\r\n%s" % (len(body), extra, body))


def test_preface_hands_the_connection_to_http2(proxy) -> None:
    peer = H2Peer(proxy)
    assert isinstance(peer.protocol, H2ClientConnection)
    assert peer.protocol in proxy.core.clients and peer.memory.protocol not in proxy.core.clients
    stream = peer.request("/a/b?q=1", headers=[(b"accept", b"*/*"), (b"cookie", b"a=1"), (b"cookie", b"b=2")])
    backend = proxy.accept()
    line, headers = backend.request_head()
    assert line == b"GET /a/b?q=1 HTTP/1.1"
    named = {name.lower(): value for name, value in headers}
    assert named[b"host"] == b"example.test"
    assert named[b"cookie"] == b"a=1; b=2"
    assert b"transfer-encoding" not in named and b"content-length" not in named
    answer(backend, extra=b"X-Thing: 1\r\n")
    peer.pump()
    status, fields, body, ended = peer.response(stream)
    assert (status, body, ended) == (200, b"hello", True)
    assert fields[b"x-thing"] == b"1" and fields[b"content-length"] == b"5"
    assert b"connection" not in fields and fields[b"x-request-id"]


def test_a_preface_split_over_reads_is_recognised(proxy) -> None:
    peer = H2Peer(proxy, split_preface=True)
    stream = peer.request("/")
    answer(proxy.accept())
    peer.pump()
    assert peer.response(stream)[0] == 200


def test_http1_requests_are_not_affected(proxy) -> None:
    client = proxy.client()
    client.send(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n")
    assert client.response().status == 505
    assert not hasattr(client.transport, "protocol")


def test_streams_are_served_at_once_and_answered_in_any_order(proxy) -> None:
    peer = H2Peer(proxy)
    first = peer.request("/one")
    second = peer.request("/two")
    backend_one, backend_two = proxy.accept(), proxy.accept()
    assert backend_one.request_head()[0] == b"GET /one HTTP/1.1"
    answer(backend_two, b"second")
    peer.pump()
    assert peer.response(second)[2:] == (b"second", True)
    assert peer.response(first)[0] is None
    answer(backend_one, b"first")
    peer.pump()
    assert peer.response(first)[2:] == (b"first", True)


def test_request_bodies_with_and_without_length(proxy) -> None:
    peer = H2Peer(proxy)
    peer.request("/sized", "POST", b"abc", headers=[(b"content-length", b"3")])
    sized = proxy.accept()
    assert sized.received().endswith(b"\r\n\r\nabc")
    assert b"content-length: 3\r\n" in sized.received().lower()
    peer.request("/streamed", "POST", b"xyz")
    streamed = proxy.accept()
    assert b"transfer-encoding: chunked\r\n" in streamed.received().lower()
    assert streamed.received().endswith(b"\r\n\r\n3\r\nxyz\r\n0\r\n\r\n")


def test_head_and_bodyless_answers_end_with_their_headers(proxy) -> None:
    peer = H2Peer(proxy)
    stream = peer.request("/", "HEAD")
    proxy.accept().send(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")
    peer.pump()
    status, fields, body, ended = peer.response(stream)
    assert (status, body, ended, fields[b"content-length"]) == (200, b"", True, b"99")


def test_errors_are_json_on_their_stream_and_the_connection_goes_on(proxy) -> None:
    peer = H2Peer(proxy)
    bad = peer.request("/%2F")  # an encoded slash: refused
    status, fields, body, ended = peer.response(bad)
    assert status == 400 and ended and b'"bad_request"' in body
    assert fields[b"content-type"] == b"application/json"
    good = peer.request("/")
    answer(proxy.accept())
    peer.pump()
    assert peer.response(good)[0] == 200
    assert not peer.closed


def test_chunked_backend_answers_are_unchunked(proxy) -> None:
    peer = H2Peer(proxy)
    stream = peer.request("/")
    proxy.accept().send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    peer.pump()
    status, fields, body, ended = peer.response(stream)
    assert (status, body, ended) == (200, b"abcde", True)
    assert b"transfer-encoding" not in fields


def test_a_slow_stream_pauses_its_backend_only(proxy) -> None:
    peer = H2Peer(proxy, settings={SettingCodes.INITIAL_WINDOW_SIZE: 1024})
    slow = peer.request("/slow")
    fast = peer.request("/fast")
    slow_backend, fast_backend = proxy.accept(), proxy.accept()
    big = b"x" * (HIGH_WATER + 100_000)
    slow_backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big[: HIGH_WATER + 50_000])
    assert slow_backend.transport.producerState == "paused"  # its window is shut: stop reading it
    answer(fast_backend, b"quick")
    assert fast_backend.transport.producerState == "producing"
    peer.pump()
    assert peer.response(fast)[2:] == (b"quick", True)
    # The client reads: window opens, the backend is read again.
    peer.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 2**24})
    peer.flush()
    for _ in range(20):
        peer.pump()
    assert slow_backend.transport.producerState == "producing"
    slow_backend.send(big[HIGH_WATER + 50_000 :])
    for _ in range(20):
        peer.pump()
    status, _, body, ended = peer.response(slow)
    assert status == 200 and len(body) == len(big) and ended


def test_a_paused_backend_stops_the_window_of_its_request_body(proxy) -> None:
    peer = H2Peer(proxy)
    stream = peer.request("/up", "POST", b"a" * 1000, end=False)
    backend = proxy.accept()
    peer.pump()
    before = peer.h2.local_flow_control_window(stream)
    backend.protocol.pauseProducing()  # the backend's receive buffer is full
    for _ in range(4):
        peer.h2.send_data(stream, b"b" * 10_000)
    peer.flush()
    peer.pump()
    assert peer.h2.local_flow_control_window(stream) == before - 40_000  # no window given back
    backend.protocol.resumeProducing()
    peer.pump()
    assert peer.h2.local_flow_control_window(stream) > before - 40_000
    assert backend.received().count(b"b" * 10_000) == 4


def test_rapid_reset_closes_the_connection(proxy) -> None:
    peer = H2Peer(proxy)
    for _ in range(400):
        stream = peer.request("/")
        peer.h2.reset_stream(stream, ErrorCodes.CANCEL)
        peer.flush()
        if peer.closed:
            break
    peer.pump()
    assert peer.closed
    terminated = peer.terminated()
    assert terminated is not None and terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    # Every backend connection the resets left is gone.
    assert not any(client.exchange for client in proxy.core.clients)


@pytest.mark.parametrize("frame", ["settings", "ping"])
def test_control_frame_floods_close_the_connection(proxy, frame: str) -> None:
    peer = H2Peer(proxy)
    for index in range(200):
        if frame == "settings":
            data = SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 16384}).serialize()
        else:
            data = PingFrame(0, opaque_data=b"%08d" % index).serialize()
        peer.send_raw(data)
        if peer.closed:
            break
    assert peer.closed
    peer.pump()
    assert peer.terminated().error_code == ErrorCodes.ENHANCE_YOUR_CALM


def test_an_hpack_bomb_stops_at_the_header_list_limit(proxy) -> None:
    peer = H2Peer(proxy)
    # One large header into the dynamic table, then many one-byte references to it.
    encoder = peer.h2.encoder
    first = encoder.encode([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                            (b":authority", b"h"), (b"x-big", b"v" * 3000)])
    peer.send_raw(HeadersFrame(1, data=first, flags=["END_HEADERS", "END_STREAM"]).serialize())
    bomb = encoder.encode([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                           (b":authority", b"h")] + [(b"x-big", b"v" * 3000)] * 50)
    assert len(bomb) < 200
    peer.send_raw(HeadersFrame(3, data=bomb, flags=["END_HEADERS", "END_STREAM"]).serialize())
    assert peer.closed
    peer.pump()
    assert peer.terminated() is not None


def test_a_continuation_flood_closes_the_connection(proxy) -> None:
    peer = H2Peer(proxy)
    block = peer.h2.encoder.encode([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"),
                                    (b":authority", b"h")])
    peer.send_raw(HeadersFrame(1, data=block).serialize())
    for _ in range(100):
        peer.send_raw(ContinuationFrame(1, data=b"").serialize())
        if peer.closed:
            break
    assert peer.closed
    assert proxy.connects == []


def test_a_stream_over_the_limit_is_refused_alone(proxy) -> None:
    peer = H2Peer(proxy)
    assert peer.h2.remote_settings.max_concurrent_streams == 8  # advertised
    streams = [peer.request("/%d" % index) for index in range(8)]
    assert len(proxy.connects) == 8
    first = proxy.accept()
    # A client that has not seen the limit yet (its first flight) or ignores it.
    peer.h2.remote_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS] = deque([100])
    over = peer.request("/over")
    assert len(proxy.connects) == 8
    assert not peer.closed and peer.terminated() is None
    refused = [event for event in peer.events if isinstance(event, StreamReset) and event.stream_id == over]
    assert refused and refused[0].error_code == ErrorCodes.REFUSED_STREAM
    # The streams within the limit go on; once one ends, a new one is served.
    answer(first)
    peer.pump()
    assert peer.response(streams[0])[0] == 200
    first.transport.clear()
    again = peer.request("/again")
    assert first.received().startswith(b"GET /again HTTP/1.1")  # on the pooled backend connection
    assert not peer.closed


def test_streams_refused_in_bulk_are_a_flood(proxy) -> None:
    peer = H2Peer(proxy)
    for index in range(8):
        peer.request("/%d" % index)
    peer.h2.remote_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS] = deque([2**31])
    for _ in range(300):
        peer.request("/over")
        if peer.closed:
            break
    assert peer.closed
    assert peer.terminated().error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert len(proxy.connects) == 8


def test_a_zero_window_stall_resets_the_stream_after_write_timeout(proxy) -> None:
    peer = H2Peer(proxy, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
    stuck = peer.request("/")
    backend = proxy.accept()
    answer(backend, b"never read")
    peer.pump()
    assert peer.response(stuck)[0] == 200 and not peer.response(stuck)[3]
    proxy.reactor.advance(6)
    proxy.core.sweeper.sweep()
    peer.pump()
    assert any(isinstance(event, StreamReset) and event.stream_id == stuck for event in peer.events)
    assert not peer.closed  # the connection window was open: other streams may go on
    backend.transport.clear()
    other = peer.request("/")
    assert backend.received().startswith(b"GET / HTTP/1.1")  # the pooled backend connection
    backend.send(b"HTTP/1.1 204 No Content\r\n\r\n")
    peer.pump()
    assert peer.response(other)[0] == 204


def test_a_stalled_connection_window_closes_the_connection(proxy) -> None:
    peer = H2Peer(proxy)
    first = peer.request("/")
    big = b"y" * 70_000  # more than the connection's initial 65535 bytes of window
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big)
    peer.transport.clear()  # never read, never acknowledged
    proxy.reactor.advance(6)
    proxy.core.sweeper.sweep()
    peer.pump()
    assert peer.closed
    assert peer.terminated().error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert first


def test_a_stalled_request_body_gets_408(proxy) -> None:
    peer = H2Peer(proxy)
    stream = peer.request("/", "POST", b"part", end=False)
    proxy.accept()
    proxy.reactor.advance(11)
    proxy.core.sweeper.sweep()
    peer.pump()
    assert peer.response(stream)[0] in (408, None)  # head not sent yet: 408; else reset
    assert any(getattr(event, "stream_id", None) == stream and isinstance(event, (StreamEnded, StreamReset))
               for event in peer.events)


def test_an_idle_connection_closes_with_goaway(proxy) -> None:
    peer = H2Peer(proxy)
    proxy.reactor.advance(61)
    proxy.core.sweeper.sweep()
    peer.pump()
    assert peer.closed and peer.terminated().error_code == ErrorCodes.NO_ERROR


def test_graceful_shutdown_finishes_open_streams(proxy) -> None:
    peer = H2Peer(proxy)
    stream = peer.request("/")
    backend = proxy.accept()
    peer.protocol.close_when_idle()
    assert not peer.closed
    answer(backend)
    assert peer.closed
    # The h2 client library stops reading at GOAWAY; real clients read on.
    sent = [(type(frame).__name__, frame.stream_id, sorted(frame.flags)) for frame in frames(peer.transport.value())]
    assert sent[0] == ("GoAwayFrame", 0, [])
    assert ("HeadersFrame", stream, ["END_HEADERS"]) in sent[1:]
    assert sent[-1] == ("DataFrame", stream, ["END_STREAM"])


def test_a_client_goaway_lets_its_open_streams_finish(proxy) -> None:
    peer = H2Peer(proxy)
    first = peer.request("/one", "POST", b"part", end=False)
    second = peer.request("/two")
    backends = [proxy.accept(), proxy.accept()]
    # GOAWAY NO_ERROR past the client library, which would stop reading.
    peer.send_raw(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR).serialize())
    assert not peer.closed
    later = peer.request("/later")  # opened after its GOAWAY: refused
    assert any(isinstance(event, StreamReset) and event.stream_id == later
               and event.error_code == ErrorCodes.REFUSED_STREAM for event in peer.events)
    assert len(proxy.connects) == 2
    answer(backends[1], b"two")
    peer.pump()
    assert peer.response(second)[1:] == (peer.response(second)[1], b"two", True) and not peer.closed
    peer.h2.send_data(first, b"-rest", end_stream=True)
    peer.flush()
    assert backends[0].received().endswith(b"4\r\npart\r\n5\r\n-rest\r\n0\r\n\r\n")
    answer(backends[0], b"one")
    peer.pump()
    assert peer.response(first)[2:] == (b"one", True)
    assert peer.closed  # the last stream done: the connection closes


def test_a_client_goaway_with_an_error_closes_at_once(proxy) -> None:
    peer = H2Peer(proxy)
    peer.request("/")
    backend = proxy.accept()
    peer.send_raw(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.PROTOCOL_ERROR).serialize())
    assert peer.closed
    peer.protocol.connectionLost()
    assert backend.transport.disconnecting


def test_a_client_goaway_without_streams_closes_at_once(proxy) -> None:
    peer = H2Peer(proxy)
    peer.send_raw(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR).serialize())
    assert peer.closed


def held(peer: H2Peer) -> int:
    """Request body bytes the proxy has not acknowledged on the connection window."""
    manager = peer.protocol.h2._inbound_flow_control_window_manager
    return manager.max_window_size - manager.current_window_size - manager._bytes_processed


def test_a_reset_paused_upload_gives_its_window_back(proxy) -> None:
    peer = H2Peer(proxy)
    stream = peer.request("/up", "POST", b"a" * 10, end=False)
    backend = proxy.accept()
    peer.pump()
    backend.protocol.pauseProducing()
    for _ in range(4):
        peer.h2.send_data(stream, b"b" * 15_000)
    peer.flush()
    peer.pump()
    assert held(peer) == 60_000  # held back while paused
    peer.h2.reset_stream(stream, ErrorCodes.CANCEL)
    peer.flush()
    peer.pump()
    assert held(peer) == 0  # given back to the connection's window


def test_an_upload_answered_first_gives_its_window_back(proxy) -> None:
    peer = H2Peer(proxy)
    stream = peer.request("/up", "POST", b"a" * 10, end=False)
    backend = proxy.accept()
    peer.pump()
    backend.protocol.pauseProducing()
    for _ in range(4):
        peer.h2.send_data(stream, b"b" * 15_000)
    peer.flush()
    peer.pump()
    answer(backend, b"early")  # the backend answers before reading it all
    peer.pump()
    assert peer.response(stream)[2:] == (b"early", True)
    assert held(peer) == 0


def test_client_loss_aborts_the_backends(proxy) -> None:
    peer = H2Peer(proxy)
    peer.request("/")
    backend = proxy.accept()
    peer.protocol.connectionLost()
    assert backend.transport.disconnecting
    assert peer.protocol not in proxy.core.clients


def test_request_head_translation() -> None:
    request = request_head(
        [(b":method", b"GET"), (b":path", b"/x"), (b":scheme", b"https"), (b":authority", b"a.test"),
         (b"host", b"other.test"), (b"te", b"trailers")], True, 0)
    assert (request.method, request.target, request.host, request.version) == (b"GET", b"/x", b"a.test", b"HTTP/2.0")
    assert not request.has_body and b"te" not in request.lowered
    with pytest.raises(ProtocolError) as refused:
        request_head([(b":method", b"CONNECT"), (b":authority", b"a:1")], True, 0)
    assert refused.value.status == 405
    with pytest.raises(ProtocolError) as refused:
        request_head([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/" + b"a" * 300)], True, 256)
    assert refused.value.status == 414
    request = request_head([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"h"),
                            (b"cookie", b"a=1"), (b"cookie", b"b=2")], False, 0)
    assert request.header(b"cookie") == b"a=1; b=2" and request.chunked


BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"h")]


@pytest.mark.parametrize(
    "fields",
    [
        BASE + [(b"x-a", b"1\r\ntransfer-encoding: chunked")],
        BASE + [(b"x-a", b"1\nx: 2")],
        BASE + [(b"x-a", b"nul\0")],
        BASE + [(b"x-a", b" padded")],
        BASE + [(b"X-Upper", b"1")],
        BASE + [(b"transfer-encoding:chunked", b"x")],
        BASE + [(b"transfer-encoding", b"chunked")],
        BASE + [(b"connection", b"close")],
        BASE + [(b"upgrade", b"websocket")],
        BASE + [(b"te", b"gzip")],
        BASE + [(b":path", b"/again")],
        [(b":method", b"GET")] + [(b"x-a", b"1")] + BASE[1:],
        BASE + [(b":status", b"200")],
        BASE[:2] + BASE[3:],
        [(b":method", b"GET"), (b":path", b"/"), (b":authority", b"h")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b""), (b":authority", b"h")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"http://other.test/x"), (b":authority", b"h")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"*"), (b":authority", b"h")],
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"x/y"), (b":authority", b"h")],
    ],
)
def test_malformed_field_lists_are_refused(fields) -> None:
    with pytest.raises(ProtocolError) as refused:
        request_head(fields, True, 0)
    assert refused.value.status == 400


def test_malformed_requests_get_400_on_their_stream(proxy) -> None:
    peer = H2Peer(proxy)
    peer.h2.config.validate_outbound_headers = False  # send what a careless client would
    peer.h2.config.normalize_outbound_headers = False
    stream = peer.request("/", headers=[(b"x-a", b"1\r\nx-injected: yes")])
    status, _, body, ended = peer.response(stream)
    assert status == 400 and ended and b"malformed HTTP/2 request" in body
    assert proxy.connects == []


def test_an_absolute_form_path_gets_400_on_its_stream(proxy) -> None:
    peer = H2Peer(proxy)
    stream = peer.request("http://other.test/x")
    status, _, body, ended = peer.response(stream)
    assert status == 400 and ended and b"origin form" in body
    assert proxy.connects == [] and not peer.closed


def test_options_asterisk_is_origin_form_enough() -> None:
    request = request_head([(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":path", b"*"),
                            (b":authority", b"h")], True, 0)
    assert request.target == b"*" and request.host == b"h"


def test_is_preface() -> None:
    assert is_preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00")
    assert is_preface(b"PRI * HTTP/2.0\r\n")
    assert not is_preface(b"PRI * HTTP/2.0\r\n\r\nXX")
    assert not is_preface(b"GET / HTTP/1.1\r\n")


def test_streams_are_in_flight_and_cut_by_the_operator(proxy) -> None:
    peer = H2Peer(proxy)
    peer.request("/one")
    peer.request("/two")
    backends = [proxy.accept(), proxy.accept()]
    assert len(proxy.core.in_flight()) == 2
    assert proxy.core.cut_backend(proxy.backend("b1"), close_idle=False) == 2
    assert all(backend.transport.disconnecting for backend in backends)


WS_CONFIG = CONFIG.replace("default: {path: /, upstream: default}",
                           "default: {path: /, upstream: default, protocols: {websocket: round_robin}}")


def websocket_request(peer: H2Peer) -> int:
    peer.h2.config.validate_outbound_headers = False
    stream = peer.h2.get_next_available_stream_id()
    peer.h2.send_headers(stream, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                                  (b":path", b"/chat"), (b":authority", b"example.test"),
                                  (b"sec-websocket-version", b"13")])
    peer.flush()
    peer.pump()
    return stream


def test_extended_connect_is_offered_and_tunnels_a_websocket(make_proxy) -> None:
    proxy = make_proxy(WS_CONFIG)
    peer = H2Peer(proxy)
    assert peer.h2.remote_settings.enable_connect_protocol == 1
    stream = websocket_request(peer)
    backend = proxy.accept()
    line, headers = backend.request_head()
    named = {name.lower(): value for name, value in headers}
    assert line == b"GET /chat HTTP/1.1"
    assert named[b"upgrade"] == b"websocket" and b"upgrade" in named[b"connection"].lower()
    assert len(named[b"sec-websocket-key"]) == 24 and named[b"sec-websocket-version"] == b"13"
    backend.transport.clear()
    backend.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: xyz\r\n\r\nfrom-backend")
    peer.pump()
    status, fields, body, ended = peer.response(stream)
    assert status == 200 and body == b"from-backend" and not ended
    assert b"sec-websocket-accept" not in fields and b"upgrade" not in fields
    peer.h2.send_data(stream, b"from-client")
    peer.flush()
    assert backend.received() == b"from-client"
    backend.close()  # the backend ends the tunnel: the stream ends
    peer.pump()
    assert peer.response(stream)[3]
    assert not peer.protocol.streams


def test_a_client_ending_the_tunnel_closes_the_backend(make_proxy) -> None:
    proxy = make_proxy(WS_CONFIG)
    peer = H2Peer(proxy)
    stream = websocket_request(peer)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    peer.pump()
    peer.h2.end_stream(stream)
    peer.flush()
    assert backend.transport.disconnecting
    peer.pump()
    assert peer.response(stream)[3] and not peer.protocol.streams


def test_an_idle_tunnel_is_reset(make_proxy) -> None:
    proxy = make_proxy(WS_CONFIG.replace("idle_timeout: 60s", "idle_timeout: 60s\n  websocket_idle_timeout: 30s"))
    peer = H2Peer(proxy)
    stream = websocket_request(peer)
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    peer.pump()
    proxy.reactor.advance(31)
    proxy.core.sweeper.sweep()
    peer.pump()
    assert any(isinstance(event, StreamReset) and event.stream_id == stream for event in peer.events)
    assert backend.transport.disconnecting


def test_a_websocket_on_a_route_without_them_is_501(make_proxy) -> None:
    proxy = make_proxy(WS_CONFIG.replace("websocket: round_robin", "websocket: 'off'"))
    peer = H2Peer(proxy)
    stream = websocket_request(peer)
    backend = proxy.accept()  # the route forwards a plain GET
    assert b"upgrade" not in backend.received().lower()
    answer(backend)
    peer.pump()
    status, _, body, ended = peer.response(stream)
    assert status == 501 and ended and b"WebSocket is not enabled" in body
