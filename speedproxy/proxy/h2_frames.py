"""HEADERS and DATA of a response, framed here but accounted by h2's state machines.

``H2Connection.send_headers`` and ``send_data`` cost more than the rest of
an HTTP/2 answer: frame objects built and serialised one by one, the
header list converted and checked again though the configuration turns
the checks off, debug logging calls whose arguments are formatted anyway.
:func:`send_headers` and :func:`send_data` do what those do for a server
stream that exists, in the same order and with the same effects -- the
stream's state machine takes the same inputs (so a stream is closed,
refused or reset exactly as before and every h2 error is raised as
before), the connection's too unless it is open (where they change
nothing), the flow-control windows are charged the same, the
HPACK block comes from the connection's encoder and is split at the
peer's frame size into HEADERS and CONTINUATION -- and append the frames'
bytes to what ``data_to_send()`` returns.  Anything else (no such stream,
an informational head, padding, priorities) goes to h2 itself.

This leans on h2's internals (``streams``, ``state_machine``, the windows,
``_data_to_send``); tests/unit/proxy/test_proxy_h2_frames.py compares
both ways frame for frame and state for state, so an h2 upgrade that
changes them fails there.
"""

from __future__ import annotations

from struct import Struct
from typing import List, Tuple

from h2.connection import ConnectionInputs, ConnectionState, H2Connection
from h2.exceptions import FlowControlError, FrameTooLargeError, ProtocolError
from h2.stream import StreamInputs

_HEAD = Struct(">HBBBL")  # length (24 bits: 16 + 8), type, flags, stream id
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
_SERVER_OPEN = ConnectionState.SERVER_OPEN
_SEND_HEADERS = ConnectionInputs.SEND_HEADERS
_SEND_DATA = ConnectionInputs.SEND_DATA
_STREAM_SEND_HEADERS = StreamInputs.SEND_HEADERS
_STREAM_SEND_DATA = StreamInputs.SEND_DATA
_STREAM_SEND_END = StreamInputs.SEND_END_STREAM


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    size = len(payload)
    return _HEAD.pack(size >> 8, size & 0xFF, kind, flags, stream_id) + payload


def send_headers(
    h2: H2Connection, stream_id: int, headers: List[Tuple[bytes, bytes]], end_stream: bool = False
) -> None:
    """``h2.send_headers(stream_id, headers, end_stream)`` for a final
    (status 200 or more) response head on an open stream."""
    stream = h2.streams.get(stream_id)
    if stream is None:
        h2.send_headers(stream_id, headers, end_stream=end_stream)
        return
    connection = h2.state_machine
    if connection.state is not _SERVER_OPEN:  # (in SERVER_OPEN the input changes nothing)
        connection.process_input(_SEND_HEADERS)
    machine = stream.state_machine
    machine.process_input(_STREAM_SEND_HEADERS)
    block = h2.encoder.encode(headers)
    if end_stream:
        machine.process_input(_STREAM_SEND_END)
    elif machine.trailers_sent:
        raise ProtocolError("Trailers must have END_STREAM set.")
    stream.request_method = None  # (what h2 finds in a response's fields)
    largest = stream.max_outbound_frame_size
    if len(block) <= largest:
        flags = _END_HEADERS | _END_STREAM if end_stream else _END_HEADERS
        h2._data_to_send += _frame(_HEADERS, flags, stream_id, block)
        return
    parts = [block[start : start + largest] for start in range(0, len(block), largest)]
    out = h2._data_to_send
    out += _frame(_HEADERS, _END_STREAM if end_stream else 0, stream_id, parts[0])
    for part in parts[1:-1]:
        out += _frame(_CONTINUATION, 0, stream_id, part)
    out += _frame(_CONTINUATION, _END_HEADERS, stream_id, parts[-1])


def send_data(h2: H2Connection, stream_id: int, data: bytes, end_stream: bool = False) -> None:
    """``h2.send_data(stream_id, data, end_stream)`` (no padding)."""
    stream = h2.streams.get(stream_id)
    if stream is None:
        h2.send_data(stream_id, data, end_stream=end_stream)
        return
    size = len(data)
    if size:
        window = min(h2.outbound_flow_control_window, stream.outbound_flow_control_window)
        if size > window:
            raise FlowControlError(f"Cannot send {size} bytes, flow control window is {window}")
        if size > h2.max_outbound_frame_size:
            raise FrameTooLargeError(
                f"Cannot send frame size {size}, max frame size is {h2.max_outbound_frame_size}"
            )
    connection = h2.state_machine
    if connection.state is not _SERVER_OPEN:
        connection.process_input(_SEND_DATA)
    machine = stream.state_machine
    machine.process_input(_STREAM_SEND_DATA)
    if end_stream:
        machine.process_input(_STREAM_SEND_END)
    stream.outbound_flow_control_window -= size
    h2._data_to_send += _frame(_DATA, _END_STREAM if end_stream else 0, stream_id, data)
    h2.outbound_flow_control_window -= size
