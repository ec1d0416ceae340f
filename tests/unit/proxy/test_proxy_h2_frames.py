"""speedproxy.proxy.h2_frames: the same bytes, states and windows as h2's own
send_headers/send_data, and the same errors."""

from __future__ import annotations

from typing import List, Tuple

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import FlowControlError, FrameTooLargeError, ProtocolError, StreamClosedError
from h2.settings import SettingCodes

from speedproxy.proxy import h2_frames
from speedproxy.proxy.h2_hpack import StaticEncoder

REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"h")]


def _pair(stream_window: int = 65535, frame_size: int = 16384) -> Tuple[H2Connection, H2Connection, H2Connection]:
    """A client and two identical servers that received its request on stream 1."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: stream_window, SettingCodes.MAX_FRAME_SIZE: frame_size})
    client.send_headers(1, REQUEST, end_stream=True)
    wire = client.data_to_send()
    servers = []
    for _ in range(2):
        server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        server.encoder = StaticEncoder()  # type: ignore[assignment]
        server.initiate_connection()
        server.receive_data(wire)
        server.data_to_send()
        servers.append(server)
    return client, servers[0], servers[1]


def _state(server: H2Connection) -> tuple:
    stream = server.streams.get(1)
    return (
        server.state_machine.state,
        server.outbound_flow_control_window,
        None if stream is None else (stream.state_machine.state, stream.outbound_flow_control_window,
                                     stream.request_method, stream.closed),
    )


RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-request-id", b"abc")]


@pytest.mark.parametrize("end_headers", [False, True])
@pytest.mark.parametrize("bodies", [[], [b""], [b"x" * 1024], [b"a" * 10, b"b" * 20]])
def test_headers_and_data_as_h2_sends_them(end_headers: bool, bodies: List[bytes]) -> None:
    client, ours, theirs = _pair()
    h2_frames.send_headers(ours, 1, RESPONSE, end_headers)
    theirs.send_headers(1, RESPONSE, end_stream=end_headers)
    head = ours.data_to_send()
    assert head == theirs.data_to_send()
    assert _state(ours) == _state(theirs)
    if end_headers:
        with pytest.raises(StreamClosedError):
            h2_frames.send_data(ours, 1, b"x", True)
        return
    for index, body in enumerate(bodies):
        last = index == len(bodies) - 1
        h2_frames.send_data(ours, 1, body, last)
        theirs.send_data(1, body, end_stream=last)
        assert _state(ours) == _state(theirs)
    sent = ours.data_to_send()
    assert sent == theirs.data_to_send()
    events = client.receive_data(head + sent)
    names = [type(event).__name__ for event in events]
    assert names[0] == "ResponseReceived"
    assert (names[-1] == "StreamEnded") == bool(bodies)
    assert b"".join(event.data for event in events if type(event).__name__ == "DataReceived") == b"".join(bodies)


def test_a_large_head_is_split_into_continuation_frames() -> None:
    client, ours, theirs = _pair(frame_size=16384)
    big = RESPONSE + [(b"x-big-%d" % index, b"v" * 1000) for index in range(40)]  # > 16 KiB
    h2_frames.send_headers(ours, 1, big, True)
    theirs.send_headers(1, big, end_stream=True)
    sent = ours.data_to_send()
    assert sent == theirs.data_to_send()
    assert sent.count(b"\x09\x00\x00\x00\x00\x01") == 1  # CONTINUATION on stream 1...
    assert sent.count(b"\x09\x04\x00\x00\x00\x01") == 1  # ...and the last one, END_HEADERS
    events = client.receive_data(sent)
    received = [event for event in events if type(event).__name__ == "ResponseReceived"]
    assert received and list(received[0].headers) == big


def test_flow_control_and_frame_size_are_refused_alike() -> None:
    _client, ours, theirs = _pair(stream_window=100)
    for server in (ours, theirs):
        h2_frames.send_headers(server, 1, RESPONSE) if server is ours else server.send_headers(1, RESPONSE)
    with pytest.raises(FlowControlError):
        h2_frames.send_data(ours, 1, b"x" * 101)
    with pytest.raises(FlowControlError):
        theirs.send_data(1, b"x" * 101)
    assert _state(ours) == _state(theirs)
    _client, ours, theirs = _pair(stream_window=1 << 20)
    h2_frames.send_headers(ours, 1, RESPONSE)
    theirs.send_headers(1, RESPONSE)
    with pytest.raises(FrameTooLargeError):
        h2_frames.send_data(ours, 1, b"x" * 16385)
    with pytest.raises(FrameTooLargeError):
        theirs.send_data(1, b"x" * 16385)
    assert _state(ours) == _state(theirs)


def test_no_such_stream_goes_to_h2() -> None:
    _client, ours, _theirs = _pair()
    with pytest.raises(ProtocolError):  # a server cannot open odd... or any stream with HEADERS here
        h2_frames.send_headers(ours, 3, RESPONSE)
    with pytest.raises(ProtocolError):
        h2_frames.send_data(ours, 5, b"x")


def test_a_closed_connection_refuses_alike() -> None:
    _client, ours, theirs = _pair()
    for server in (ours, theirs):
        server.close_connection()
    with pytest.raises(ProtocolError):
        h2_frames.send_headers(ours, 1, RESPONSE)
    with pytest.raises(ProtocolError):
        theirs.send_headers(1, RESPONSE)
