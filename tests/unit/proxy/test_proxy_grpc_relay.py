"""gRPC calls relayed in memory (:mod:`speedproxy.proxy.grpc_relay` and its client side,
:mod:`speedproxy.proxy.grpc_stream`): an HTTP/2 client, the proxy core, HTTP/2 backends."""

from __future__ import annotations

from typing import Any

import pytest
from h2.errors import ErrorCodes
from h2.events import DataReceived, StreamEnded, TrailersReceived
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.python.failure import Failure

from grpc_peers import CONFIG, GRPC, Backend, Client, Log, message
from speedproxy.accesslog import AccessLogFormatter, JsonAccessLogFormatter
from speedproxy.proxy.grpc_relay import GrpcCall
from speedproxy.testing import InMemoryProxy


@pytest.fixture
def proxy() -> InMemoryProxy:
    made = InMemoryProxy(CONFIG)
    made.core.access_log = Log()  # type: ignore[assignment]
    return made


def test_a_unary_call_is_relayed_with_trailers(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call(extra=[(b"x-forwarded-for", b"1.2.3.4"), (b"grpc-timeout", b"5S"), (b"x-custom", b"v")])
    assert isinstance(client.protocol.streams[stream], GrpcCall)
    backend = Backend(proxy)
    assert backend.address == ("10.2.0.1", 50051)
    sent = backend.request()
    assert sent[b":path"] == b"/pkg.Svc/Do" and sent[b":authority"] == b"api.test" and sent[b":scheme"] == b"http"
    assert sent[b"te"] == b"trailers" and sent[b"content-type"] == b"application/grpc" and sent[b"x-custom"] == b"v"
    assert sent[b"x-forwarded-for"] == b"1.2.3.4, 10.9.9.9" and sent[b"x-real-ip"] == b"10.9.9.9"
    assert sent[b"via"] == b"2 speedproxy" and sent[b"x-request-id"] and sent[b"traceparent"].startswith(b"00-")
    assert sent[b"grpc-timeout"].endswith((b"n", b"u", b"m")) or sent[b"grpc-timeout"] == b"5S"
    assert backend.body() == message(b"hi")
    assert proxy.backend("g1").local_connections == 1
    backend.respond(body=b"answer")
    client.pump()
    got = client.answer(stream)
    assert got["head"][b":status"] == b"200" and got["head"][b"x-initial"] == b"1"
    assert got["body"] == message(b"answer")
    assert got["trailers"] == {b"grpc-status": b"0", b"grpc-message": b"fine", b"x-trailer": b"2"}
    assert got["ended"] and got["reset"] is None
    assert proxy.backend("g1").local_connections == 0 and proxy.backend("g1").requests == 1
    line = proxy.core.access_log.lines[-1]  # type: ignore[union-attr]
    assert '"POST /pkg.Svc/Do HTTP/2.0" 200 ' in line and " upstream=10.2.0.1:50051 grpc=0 trace=" in line
    assert client.protocol.streams == {}


def test_the_deadline_passing_at_the_proxy_cancels_the_backend_stream(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call(extra=[(b"grpc-timeout", b"200m")])
    backend = Backend(proxy)
    backend.request()
    proxy.reactor.advance(0.19)
    client.pump()
    assert client.answer(stream)["head"] is None
    proxy.reactor.advance(0.02)
    client.pump()
    got = client.answer(stream)
    assert got["trailers"][b"grpc-status"] == b"4" and got["trailers"][b"content-type"] == b"application/grpc"
    assert got["ended"] and got["body"] == b""
    backend.pump()
    assert backend.reset_codes() == [ErrorCodes.CANCEL]
    assert proxy.backend("g1").local_connections == 0
    assert " grpc=4 " in proxy.core.access_log.lines[-1]  # type: ignore[union-attr]


def test_the_deadline_after_the_answer_started_ends_it_with_trailers(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call(extra=[(b"grpc-timeout", b"1S")])
    backend = Backend(proxy)
    backend.respond(body=b"part", end=False)
    client.pump()
    proxy.reactor.advance(1.0)
    client.pump()
    got = client.answer(stream)
    assert got["head"][b"x-initial"] == b"1" and got["body"] == message(b"part")
    assert got["trailers"][b"grpc-status"] == b"4" and got["ended"]
    backend.pump()
    assert backend.reset_codes() == [ErrorCodes.CANCEL]


def test_a_refused_backend_is_unavailable_as_a_trailers_only_answer(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call()
    proxy.refuse(ConnectionRefusedError())
    client.pump()
    got = client.answer(stream)
    assert got["head"] == {
        b":status": b"200",
        b"content-type": b"application/grpc",
        b"grpc-status": b"14",
        b"grpc-message": b"backend 10.2.0.1:50051: connection refused",
    }
    assert got["ended"] and got["body"] == b""
    assert proxy.backend("g1").failures == 1 and proxy.backend("g1").local_connections == 0
    assert " grpc=14 " in proxy.core.access_log.lines[-1]  # type: ignore[union-attr]


def test_a_refused_call_is_retried_on_another_backend(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call("/pkg.Pair/Do")
    first = proxy.connects[-1]
    proxy.refuse(ConnectionRefusedError())
    second = proxy.connects[-1]
    assert {first[0], second[0]} == {"10.3.0.1", "10.3.0.2"}
    backend = Backend(proxy)
    assert backend.request()[b":path"] == b"/pkg.Pair/Do"
    assert backend.body() == message(b"hi")  # the body held back while connecting went to the second
    backend.respond(body=b"ok")
    client.pump()
    assert client.answer(stream)["trailers"][b"grpc-status"] == b"0"


def test_no_healthy_backend_is_unavailable(proxy: InMemoryProxy) -> None:
    proxy.backend("g1").healthy = False
    client = Client(proxy)
    stream = client.call()
    got = client.answer(stream)
    assert got["head"][b"grpc-status"] == b"14" and b"no healthy backend" in got["head"][b"grpc-message"]
    assert proxy.connects == []


def test_a_backend_reset_before_the_answer_is_unavailable_after_it_relayed(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    first = client.call()
    second = client.call()
    backend = Backend(proxy)
    backend.request(3)
    backend.h2.reset_stream(1, ErrorCodes.INTERNAL_ERROR)
    backend.respond(3, body=b"x", end=False)
    backend.h2.reset_stream(3, ErrorCodes.CANCEL)
    backend.send()
    client.pump()
    early, late = client.answer(first), client.answer(second)
    assert early["head"][b"grpc-status"] == b"14" and b"INTERNAL_ERROR" in early["head"][b"grpc-message"]
    assert late["body"] == message(b"x") and late["reset"] == ErrorCodes.CANCEL
    assert proxy.backend("g1").local_connections == 0


def test_a_lost_backend_connection_is_unavailable(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call()
    backend = Backend(proxy)
    backend.request()
    backend.memory.protocol.connectionLost(Failure(ConnectionLost()))
    client.pump()
    got = client.answer(stream)
    assert got["head"][b"grpc-status"] == b"14" and b"lost" in got["head"][b"grpc-message"]


def test_a_client_reset_cancels_the_backend_stream(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call(end=False)
    backend = Backend(proxy)
    backend.request()
    client.h2.reset_stream(stream, ErrorCodes.CANCEL)
    client.flush()
    backend.pump()
    assert backend.reset_codes() == [ErrorCodes.CANCEL]
    assert proxy.backend("g1").local_connections == 0 and proxy.backend("g1").failures == 0
    line = proxy.core.access_log.lines[-1]  # type: ignore[union-attr]
    assert '" 499 ' in line and " grpc=1 " in line


def test_streams_both_ways_and_the_request_end(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call(body=b"one", end=False)
    backend = Backend(proxy)
    backend.respond(body=b"r1", end=False)
    client.h2.send_data(stream, message(b"two"))
    client.flush()
    backend.pump()
    assert backend.body() == message(b"one") + message(b"two")
    assert not any(isinstance(event, StreamEnded) for event in backend.events)
    client.h2.end_stream(stream)
    client.flush()
    backend.pump()
    assert any(isinstance(event, StreamEnded) and event.stream_id == 1 for event in backend.events)
    backend.h2.send_data(1, message(b"r2"))
    backend.h2.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    backend.send()
    client.pump()
    got = client.answer(stream)
    assert got["body"] == message(b"r1") + message(b"r2") and got["trailers"] == {b"grpc-status": b"0"}


def test_a_client_that_does_not_read_stops_the_backend_not_the_proxy(proxy: InMemoryProxy) -> None:
    """Flow control end to end: what the client's window does not take stays unacknowledged
    to the backend, so the backend's window shuts; reading again opens both."""
    client = Client(proxy, reading=False)
    stream = client.call()
    backend = Backend(proxy)
    backend.respond(end=False)
    chunk = b"z" * 16384
    sent = 0
    while backend.h2.local_flow_control_window(1) >= len(chunk) and sent < 4 * 1024 * 1024:
        backend.h2.send_data(1, chunk)
        sent += len(chunk)
        backend.send()
        client.pump()
        backend.pump()  # whatever window the proxy gives back
    received = len(client.answer(stream)["body"])
    assert received == 65535  # the client's window
    assert backend.h2.local_flow_control_window(1) < len(chunk)  # the backend must wait
    assert sent <= received + 256 * 1024  # the proxy holds at most one stream window
    call = client.protocol.streams[stream]
    assert call.waiting and call.blocked_since >= 0
    client.reading = True
    for _ in range(200):
        for event in client.events:
            if isinstance(event, DataReceived) and event.flow_controlled_length and not getattr(event, "_acked", False):
                event._acked = True
                client.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        client.flush()
        client.pump()
        backend.pump()
        if len(client.answer(stream)["body"]) == sent:
            break
    assert len(client.answer(stream)["body"]) == sent
    assert backend.h2.local_flow_control_window(1) >= len(chunk)


def test_a_request_body_waits_for_the_backend_window(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call(body=None, end=False)
    backend = Backend(proxy)
    backend.request()
    for size in (16384, 16384, 16384, 16383):
        client.h2.send_data(stream, b"q" * size)
        client.flush()
        client.pump()
    backend.pump()
    assert len(backend.body()) == 65535
    # The backend has not acknowledged: the proxy holds what the client sends next...
    assert client.h2.local_flow_control_window(stream) == 65535  # acknowledged as the backend took it
    for _ in range(3):
        client.h2.send_data(stream, b"r" * 15000)
    client.flush()
    client.pump()
    backend.pump()
    assert len(backend.body()) == 65535
    assert client.h2.local_flow_control_window(stream) == 65535 - 45000  # ...and gives the client no window
    backend.h2.acknowledge_received_data(65535, 1)
    backend.send()
    backend.pump()
    client.pump()
    assert len(backend.body()) == 65535 + 45000
    assert client.h2.local_flow_control_window(stream) == 65535


def test_access_log_formats_show_the_grpc_status() -> None:
    args = ("1.2.3.4", b"POST", b"/a/B", b"HTTP/2.0", 200, 7, None, b"grpc", 0.01, "10.0.0.1:50051", b"r-1")
    line = AccessLogFormatter(lambda: 0.0).format(*args, trace=b"ab", grpc_status=5)
    assert line.endswith("upstream=10.0.0.1:50051 grpc=5 trace=ab rid=r-1")
    assert "grpc=" not in AccessLogFormatter(lambda: 0.0).format(*args)
    assert '"grpc_status":5' in JsonAccessLogFormatter(lambda: 0.0).format(*args, grpc_status=5)


def test_a_backend_lost_mid_answer_ends_it_after_the_messages_relayed(proxy: InMemoryProxy) -> None:
    client = Client(proxy, reading=False)
    stream = client.call()
    backend = Backend(proxy)
    backend.respond(end=False)
    for _ in range(5):
        backend.h2.send_data(1, b"m" * 16384)
    backend.send()
    client.pump()
    assert len(client.answer(stream)["body"]) == 65535  # the rest waits for the client's window
    backend.memory.protocol.connectionLost(Failure(ConnectionLost()))
    client.pump()
    assert client.answer(stream)["trailers"] is None
    client.h2.acknowledge_received_data(65535, stream)
    client.flush()
    client.pump()
    got = client.answer(stream)
    assert len(got["body"]) == 5 * 16384
    assert got["trailers"][b"grpc-status"] == b"14" and got["ended"]


def test_a_malformed_field_from_the_backend_is_a_backend_failure(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call()
    backend = Backend(proxy)
    backend.request()
    backend.h2.config.normalize_outbound_headers = False  # a backend that sends what h2 would not
    backend.h2.config.validate_outbound_headers = False
    backend.h2.send_headers(1, [(b":status", b"200"), GRPC, (b"X-Upper", b"1")])
    backend.send()
    client.pump()
    got = client.answer(stream)
    assert got["head"][b"grpc-status"] == b"14" and b"malformed" in got["head"][b"grpc-message"]
    assert b"X-Upper" not in got["head"] and b"x-upper" not in got["head"]
    backend.pump()
    assert backend.reset_codes() == [ErrorCodes.CANCEL]
    assert proxy.backend("g1").failures == 1


def test_request_trailers_are_relayed_after_the_messages(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call(body=b"one", end=False)
    backend = Backend(proxy)
    backend.request()
    client.h2.send_data(stream, message(b"two"))
    client.h2.send_headers(stream, [(b"x-checksum", b"abc")], end_stream=True)
    client.flush()
    backend.pump()
    assert backend.body() == message(b"one") + message(b"two")
    trailers = [event for event in backend.events if isinstance(event, TrailersReceived)]
    assert [dict(event.headers) for event in trailers] == [{b"x-checksum": b"abc"}]
    assert any(isinstance(event, StreamEnded) and event.stream_id == 1 for event in backend.events)




def test_a_backend_at_max_conn_takes_no_more_calls(make_proxy: Any) -> None:
    proxy = make_proxy(CONFIG.replace("scheme: h2c}]", "scheme: h2c, max_conn: 1}]"))
    client = Client(proxy)
    first = client.call()
    second = client.call()
    got = client.answer(second)
    assert got["head"][b"grpc-status"] == b"14" and b"max_conn" in got["head"][b"grpc-message"]
    backend = Backend(proxy)
    backend.respond(body=b"ok")
    client.pump()
    assert client.answer(first)["trailers"][b"grpc-status"] == b"0"
    third = client.call()
    backend.request(3)
    assert client.answer(third)["head"] is None  # taken: the slot is free again


def test_a_trailers_only_answer_before_the_request_ended_closes_the_backend_stream(proxy: InMemoryProxy) -> None:
    """A backend that answers at once (UNIMPLEMENTED, say) while the client still streams:
    the proxy's side of the backend stream is closed (RST_STREAM NO_ERROR), not left
    half-open on the pooled connection, where it would count against the backend's
    MAX_CONCURRENT_STREAMS for as long as the connection lives."""
    client = Client(proxy)
    stream = client.call(body=b"one", end=False)
    backend = Backend(proxy)
    backend.request()
    backend.h2.send_headers(1, [(b":status", b"200"), GRPC, (b"grpc-status", b"12")], end_stream=True)
    backend.send()
    client.pump()
    assert client.answer(stream)["trailers"][b"grpc-status"] == b"12"
    backend.pump()
    assert backend.reset_codes() == [ErrorCodes.NO_ERROR]
    (upstream,) = proxy.core.h2_pool.connections()
    assert upstream.streams == {} and upstream.h2.open_outbound_streams == 0


def test_calls_over_the_backends_stream_limit_wait_for_another_connection(proxy: InMemoryProxy) -> None:
    """Two calls wait for a first connection to a backend that takes one stream at
    a time: the second is not sent there (it would be refused) but waits for a
    second connection; a client that gives up meanwhile is forgotten by that one."""
    from h2.settings import SettingCodes

    client = Client(proxy)
    first = client.call()
    second = client.call()
    third = client.call()
    assert proxy.pending_connects() == 1
    backend = Backend(proxy, {SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    backend.pump()
    assert [event.stream_id for event in backend.events if type(event).__name__ == "RequestReceived"] == [1]
    assert proxy.pending_connects() == 1  # one more connection, for the other two
    client.h2.reset_stream(third, ErrorCodes.CANCEL)
    client.flush()
    assert sum(len(connection.waiting) for connection in proxy.core.h2_pool.connections()) == 1
    other = Backend(proxy)
    assert other.request(1)[b":path"] == b"/pkg.Svc/Do" and other.body(1) == message(b"hi")
    other.pump()
    assert [event.stream_id for event in other.events if type(event).__name__ == "RequestReceived"] == [1]
    other.respond(1, body=b"two")
    backend.respond(1, body=b"one")
    client.pump()
    assert client.answer(first)["body"] == message(b"one") and client.answer(second)["body"] == message(b"two")
    assert client.answer(third)["head"] is None and third not in client.protocol.streams
    assert all(not connection.waiting for connection in proxy.core.h2_pool.connections())


def test_a_connection_out_of_stream_ids_hands_the_call_to_a_new_one(proxy: InMemoryProxy) -> None:
    """A pooled connection that used up its stream ids (2^30 calls: a day or two of
    a busy worker) takes no new stream: the call goes to a new connection to the
    same backend, not UNAVAILABLE, and the backend is not blamed."""
    client = Client(proxy)
    first = client.call()
    backend = Backend(proxy)
    backend.respond(body=b"one")
    client.pump()
    assert client.answer(first)["trailers"][b"grpc-status"] == b"0"
    (upstream,) = proxy.core.h2_pool.connections()
    upstream.h2.highest_outbound_stream_id = 2**31 - 1  # the last id was used
    second = client.call()
    assert client.answer(second)["head"] is None
    assert proxy.pending_connects() == 1
    fresh = Backend(proxy)
    assert fresh.request(1)[b":path"] == b"/pkg.Svc/Do"
    fresh.respond(1, body=b"two")
    client.pump()
    assert client.answer(second)["body"] == message(b"two")
    assert proxy.backend("g1").failures == 0
    backend.pump()
    assert backend.memory.protocol.gone or backend.memory.transport.disconnecting


def test_a_call_the_backend_refused_unprocessed_is_sent_again(proxy: InMemoryProxy) -> None:
    """A backend's GOAWAY (a graceful restart) refuses the streams past its last id,
    and REFUSED_STREAM says a stream was not processed (RFC 9113 8.7): both are safe
    to send again, so the call goes on a new connection (to the same backend, the
    only one of the route), body included, instead of an UNAVAILABLE, and the
    backend is not blamed."""
    from hyperframe.frame import GoAwayFrame

    client = Client(proxy)
    first = client.call(body=b"kept")
    second = client.call(body=b"refused, then sent again")
    backend = Backend(proxy)
    assert backend.body(3) == message(b"refused, then sent again")
    backend.memory.send(GoAwayFrame(0, last_stream_id=1, error_code=0).serialize())
    client.pump()
    assert client.answer(second)["head"] is None
    fresh = Backend(proxy)
    assert fresh.request(1)[b":path"] == b"/pkg.Svc/Do"
    assert fresh.body(1) == message(b"refused, then sent again")
    fresh.pump()
    assert any(isinstance(event, StreamEnded) and event.stream_id == 1 for event in fresh.events)
    fresh.respond(1, body=b"two")
    backend.respond(1, body=b"one")
    client.pump()
    assert client.answer(first)["body"] == message(b"one")
    assert client.answer(second)["body"] == message(b"two")
    assert client.answer(second)["trailers"][b"grpc-status"] == b"0"
    third = client.call(body=None, end=False)
    body = message(b"x" * 70000)  # more than is kept to send again
    acknowledged = 0
    for start in range(0, len(body), 16384):
        client.h2.send_data(third, body[start : start + 16384])
        client.flush()
        client.pump()
        fresh.pump()
        received = len(fresh.body(3))
        fresh.h2.acknowledge_received_data(received - acknowledged, 3)
        acknowledged = received
        fresh.send()
        client.pump()
    fresh.pump()
    assert len(fresh.body(3)) == len(body)
    fresh.h2.reset_stream(3, ErrorCodes.REFUSED_STREAM)
    fresh.send()
    client.pump()
    assert client.answer(third)["head"][b"grpc-status"] == b"14"
    assert proxy.backend("g1").failures == 1
