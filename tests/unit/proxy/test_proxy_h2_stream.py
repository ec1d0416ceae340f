"""One HTTP/2 stream as an exchange's client: HTTP/1.1 answers turned into frames."""

from __future__ import annotations

from typing import Any, List

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, InformationalResponseReceived, ResponseReceived, StreamEnded, StreamReset
from h2.errors import ErrorCodes

from speedproxy.proxy.h2_stream import H2Stream


class FakeCore:
    server_tag = b"X-Speedproxy: t\r\n"

    class server:
        max_body_size = 0


class FakeClock:
    def seconds(self) -> float:
        return 5.0


class FakeConnection:
    """The parts of :class:`H2ClientConnection` a stream uses, around a real h2 server state."""

    def __init__(self) -> None:
        self.core = FakeCore()
        self.clock = FakeClock()
        self.scheme = b"https"
        self.peer_ip = "192.0.2.1"
        self.transport = None
        self.write_paused = False
        self.gone = False
        self.blocked: set = set()
        self.streams: dict = {}
        self.over: List[H2Stream] = []
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.h2.initiate_connection()
        self.h2.receive_data(self.client.data_to_send())
        self.client.receive_data(self.h2.data_to_send())
        self.h2.receive_data(self.client.data_to_send())

    def open(self, method: bytes = b"GET") -> H2Stream:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, [(b":method", method), (b":path", b"/"), (b":scheme", b"https"),
                                             (b":authority", b"a")], end_stream=True)
        self.h2.receive_data(self.client.data_to_send())
        stream = H2Stream(self, stream_id, method == b"HEAD")  # type: ignore[arg-type]
        self.streams[stream_id] = stream
        return stream

    def flush(self) -> None:
        pass

    def stream_over(self, stream: H2Stream) -> None:
        stream.over = True
        self.over.append(stream)

    def events(self) -> List[Any]:
        return self.client.receive_data(self.h2.data_to_send())


class FakeExchange:
    def __init__(self) -> None:
        self.upstream = None
        self.finished = False
        self.lost = False

    def client_lost(self) -> None:
        self.lost = True


@pytest.fixture
def connection() -> FakeConnection:
    return FakeConnection()


def test_head_and_body_become_headers_and_data(connection) -> None:
    stream = connection.open()
    stream.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n"
                 b"Keep-Alive: timeout=5\r\nContent-Length: 5\r\nX-Two:  spaced \r\n\r\nhel")
    stream.write(b"lo")
    events = connection.events()
    response = events[0]
    assert isinstance(response, ResponseReceived)
    assert response.headers == [(b":status", b"200"), (b"content-type", b"text/plain"),
                                (b"content-length", b"5"), (b"x-two", b"spaced")]
    assert b"".join(event.data for event in events if isinstance(event, DataReceived)) == b"hello"
    assert isinstance(events[-1], StreamEnded)  # ended with the last byte of the length


def test_a_head_split_anywhere_is_put_together(connection) -> None:
    stream = connection.open()
    data = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"
    for index in range(len(data)):
        stream.write(data[index : index + 1])
    events = connection.events()
    assert events[0].headers[0] == (b":status", b"404")
    assert isinstance(events[-1], StreamEnded)


def test_informational_answers_come_first(connection) -> None:
    stream = connection.open(b"POST")
    stream.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    events = connection.events()
    assert isinstance(events[0], InformationalResponseReceived)
    assert isinstance(events[1], ResponseReceived) and events[1].stream_ended is not None


def test_a_head_answer_ends_on_its_headers(connection) -> None:
    stream = connection.open(b"HEAD")
    stream.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    events = connection.events()
    assert events[0].stream_ended is not None and stream.done


def test_a_body_of_unknown_length_ends_with_the_exchange(connection) -> None:
    stream = connection.open()
    exchange = FakeExchange()
    stream.exchange = exchange  # type: ignore[assignment]
    stream.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome")
    stream.write(b" more")
    assert not any(isinstance(event, StreamEnded) for event in connection.events())
    stream.exchange_finished(exchange, False)  # type: ignore[arg-type]
    assert any(isinstance(event, StreamEnded) for event in connection.events())
    assert connection.over == [stream]


def test_an_aborted_exchange_resets_the_stream(connection) -> None:
    stream = connection.open()
    exchange = FakeExchange()
    stream.exchange = exchange  # type: ignore[assignment]
    stream.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
    stream.exchange_finished(exchange, False, abort=True)  # type: ignore[arg-type]
    reset = [event for event in connection.events() if isinstance(event, StreamReset)]
    assert reset and reset[0].error_code == ErrorCodes.INTERNAL_ERROR
    assert connection.over == [stream]


def test_errors_are_json(connection) -> None:
    stream = connection.open()
    size = stream.send_error(503, "no_backend_available", "none", b"rid-1", True)
    events = connection.events()
    assert events[0].headers[0] == (b":status", b"503")
    assert (b"x-request-id", b"rid-1") in events[0].headers
    body = b"".join(event.data for event in events if isinstance(event, DataReceived))
    assert b'"no_backend_available"' in body and size > len(body)


def test_window_shut_holds_data_and_says_since_when(connection) -> None:
    stream = connection.open()
    window = connection.h2.local_flow_control_window(stream.stream_id)
    body = b"z" * (window + 10)
    stream.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert stream.waiting and stream.blocked_since == 5.0 and stream in connection.blocked
    events = connection.events()
    assert sum(len(event.data) for event in events if isinstance(event, DataReceived)) == window
    connection.client.increment_flow_control_window(100, stream.stream_id)
    connection.client.increment_flow_control_window(100)
    connection.h2.receive_data(connection.client.data_to_send())
    stream.window_opened()
    assert not stream.waiting and stream.blocked_since == -1.0
    events = connection.events()
    assert [len(event.data) for event in events if isinstance(event, DataReceived)] == [10]
    assert isinstance(events[-1], StreamEnded)


def test_request_body_window_waits_while_paused(connection) -> None:
    stream = connection.open(b"POST")
    exchange = FakeExchange()
    bodies: List[bytes] = []
    exchange.request_body = bodies.append  # type: ignore[attr-defined]
    stream.exchange = exchange  # type: ignore[assignment]
    stream.pause_reading(stream.PAUSED_CONNECTING)
    stream.request_data(b"abc", 3)
    assert bodies == [b"abc"] and stream.unacked == 3
    stream.resume_reading(stream.PAUSED_CONNECTING)
    assert stream.unacked == 0


def held_body(connection: FakeConnection) -> "tuple[H2Stream, FakeExchange]":
    """A POST stream whose 40000 body bytes came in while its exchange was paused."""
    client = connection.client
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, [(b":method", b"POST"), (b":path", b"/"), (b":scheme", b"https"),
                                    (b":authority", b"a")])
    connection.h2.receive_data(client.data_to_send())
    stream = H2Stream(connection, stream_id, False)  # type: ignore[arg-type]
    connection.streams[stream_id] = stream
    exchange = FakeExchange()
    exchange.request_body = lambda data: None  # type: ignore[attr-defined]
    stream.exchange = exchange  # type: ignore[assignment]
    stream.pause_reading(stream.PAUSED_BY_UPSTREAM)
    for _ in range(4):
        client.send_data(stream_id, b"x" * 10_000)
    for event in connection.h2.receive_data(client.data_to_send()):
        if isinstance(event, DataReceived):
            stream.request_data(event.data, event.flow_controlled_length)
    assert stream.unacked == 40_000
    return stream, exchange


def client_window(connection: FakeConnection) -> int:
    """The connection window the client sees, after what the server sent."""
    connection.events()
    return connection.client.outbound_flow_control_window


def test_a_held_body_goes_back_to_the_window_when_the_client_resets(connection) -> None:
    stream, _ = held_body(connection)
    assert client_window(connection) == 65535 - 40_000
    stream.client_gone()
    assert stream.unacked == 0 and client_window(connection) == 65535


def test_a_held_body_goes_back_to_the_window_when_the_answer_ends_first(connection) -> None:
    stream, exchange = held_body(connection)
    stream.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    stream.exchange_finished(exchange, True)  # type: ignore[arg-type]
    assert stream.done and stream.unacked == 0
    assert client_window(connection) == 65535


def test_a_held_body_goes_back_when_resumed_after_the_answer(connection) -> None:
    stream, _ = held_body(connection)
    stream.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert stream.done
    stream.resume_reading(stream.PAUSED_BY_UPSTREAM)
    assert client_window(connection) == 65535


def test_a_lost_connection_acknowledges_nothing(connection) -> None:
    stream, _ = held_body(connection)
    connection.gone = True
    stream.client_gone()
    assert client_window(connection) == 65535 - 40_000
