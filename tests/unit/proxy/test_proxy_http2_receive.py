"""speedproxy.proxy.http2._ServerH2Connection._receive_frame: h2's own, less its
trace formatting: the same events, frames and errors as h2's for frames on
open, reset, ended and implicitly closed streams."""

from __future__ import annotations

from typing import Any, List

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from hpack import Encoder
from hyperframe.frame import DataFrame, HeadersFrame

from speedproxy.proxy.http2 import PREFACE, _ServerH2Connection

REQUEST = [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"h")]


def _servers() -> List[H2Connection]:
    made = []
    for kind in (_ServerH2Connection, H2Connection):
        server = kind(H2Configuration(client_side=False, header_encoding=None))
        server.initiate_connection()
        server.data_to_send()
        made.append(server)
    return made


def _settings() -> bytes:
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    return client.data_to_send()  # the preface and the client's SETTINGS


def _headers(stream_id: int, encoder: Encoder, end: bool) -> bytes:
    frame = HeadersFrame(stream_id)
    frame.data = encoder.encode(REQUEST)
    frame.flags.add("END_HEADERS")
    if end:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def _data(stream_id: int, end: bool = False) -> bytes:
    frame = DataFrame(stream_id)
    frame.data = b"body"
    if end:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def _outcome(server: H2Connection, wire: bytes) -> Any:
    try:
        events = server.receive_data(wire)
    except H2Error as error:
        return ("error", type(error).__name__, str(error), bytes(server.data_to_send()))
    described = [(type(event).__name__, sorted((k, repr(v)) for k, v in vars(event).items())) for event in events]
    return ("events", described, bytes(server.data_to_send()))


def _both(steps: List[Any]) -> Any:
    """Run ``steps`` (wire bytes, or callables taking a server) on both
    servers; compare every outcome; return the last."""
    ours, theirs = _servers()
    outcome = None
    for step in steps:
        if callable(step):
            step(ours)
            step(theirs)
            assert bytes(ours.data_to_send()) == bytes(theirs.data_to_send())
            continue
        outcome = _outcome(ours, step)
        assert outcome == _outcome(theirs, step)
    return outcome


_RST_STREAM_1 = b"\x00\x00\x04\x03\x00\x00\x00\x00\x01"  # an RST_STREAM frame's head, stream 1


def test_preface_then_request_and_body() -> None:
    encoder = Encoder()
    assert _settings().startswith(PREFACE)
    last = _both([_settings(), _headers(1, encoder, False), _data(1), _data(1, True)])
    assert [name for name, _ in last[1]] == ["DataReceived", "StreamEnded"]


@pytest.mark.parametrize("cleaned_up", [False, True])
def test_data_on_a_stream_we_reset_is_answered_with_rst_stream(cleaned_up: bool) -> None:
    encoder = Encoder()
    last = _both([
        _settings(),
        _headers(1, encoder, False),
        lambda server: server.reset_stream(1, ErrorCodes.CANCEL),
    ] + ([_headers(3, encoder, False)] if cleaned_up else []) + [_data(1)])
    assert last[0] == "events" and last[-1].startswith(_RST_STREAM_1)


@pytest.mark.parametrize("cleaned_up", [False, True])
def test_frames_on_a_stream_that_ended(cleaned_up: bool) -> None:
    encoder = Encoder()
    last = _both([
        _settings(),
        _headers(1, encoder, True),
        lambda server: server.send_headers(1, [(b":status", b"204")], end_stream=True),
    ] + ([_headers(3, encoder, False), _headers(1, encoder, False)] if cleaned_up else [_data(1)]))
    if cleaned_up:
        assert last[:2] == ("error", "StreamClosedError")  # HEADERS again on it: a connection error
    else:
        assert last[0] == "events" and last[-1].startswith(_RST_STREAM_1)


def test_a_stream_below_the_highest_one_opened() -> None:
    encoder = Encoder()
    last = _both([_settings(), _headers(3, encoder, False), _headers(1, encoder, False)])
    assert last[:2] == ("error", "StreamIDTooLowError")


def test_data_on_an_implicitly_closed_stream() -> None:
    encoder = Encoder()
    _both([_settings(), _headers(1, encoder, False), _headers(3, encoder, False), _data(1)])
