"""Which HTTP/2 streams become gRPC calls (:mod:`speedproxy.proxy.grpc_dispatch`), in memory."""

from __future__ import annotations

from typing import Any

import pytest
from h2.errors import ErrorCodes

from grpc_peers import CONFIG, Backend, Client, Log
from speedproxy.proxy.grpc_dispatch import grpc_pool
from speedproxy.proxy.grpc_relay import GrpcCall
from speedproxy.config import parse_config
from speedproxy.testing import InMemoryProxy


@pytest.fixture
def proxy() -> InMemoryProxy:
    made = InMemoryProxy(CONFIG)
    made.core.access_log = Log()  # type: ignore[assignment]
    return made


def test_plain_requests_on_a_grpc_route_get_415(proxy: InMemoryProxy) -> None:
    plain = proxy.client()
    plain.send(b"POST /pkg.Svc/Do HTTP/1.1\r\nHost: h\r\nContent-Type: application/grpc\r\nContent-Length: 0\r\n\r\n")
    answer = plain.response()
    assert answer.status == 415 and answer.json()["error"] == "grpc_only"
    client = Client(proxy)
    stream = client.h2.get_next_available_stream_id()
    client.h2.send_headers(stream, [(b":method", b"GET"), (b":path", b"/pkg.Svc/Do"), (b":scheme", b"http"),
                                    (b":authority", b"api.test")], end_stream=True)
    client.flush()
    client.pump()
    assert client.answer(stream)["head"][b":status"] == b"415"
    assert proxy.connects == []

def test_grpc_content_on_a_plain_route_takes_the_http_path(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    client.call("/other/Do")
    backend = proxy.accept()
    assert backend.host == "10.1.0.1"
    assert backend.received().startswith(b"POST /other/Do HTTP/1.1\r\n")

def test_a_config_without_grpc_routes_never_looks(make_proxy: Any) -> None:
    plain = make_proxy()
    assert plain.core.grpc_routes is False and plain.core.h2_pool is None

def test_an_operator_disconnect_ends_the_backends_calls(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.call(end=False)
    backend = Backend(proxy)
    backend.request()
    assert proxy.core.disconnect_backend("rpc", "g1") == 2  # the call, then its idle connection
    client.pump()
    got = client.answer(stream)
    assert got["head"][b"grpc-status"] == b"14" and b"operator" in got["head"][b"grpc-message"]
    backend.pump()
    assert backend.reset_codes() == [ErrorCodes.CANCEL] and backend.memory.transport.disconnecting
    assert proxy.backend("g1").failures == 0 and proxy.backend("g1").local_connections == 0

def test_request_trailers_on_a_plain_route_end_the_body_as_before(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    stream = client.h2.get_next_available_stream_id()
    client.h2.send_headers(stream, [(b":method", b"POST"), (b":path", b"/up"), (b":scheme", b"http"),
                                    (b":authority", b"api.test")])
    client.h2.send_data(stream, b"body")
    client.h2.send_headers(stream, [(b"x-checksum", b"abc")], end_stream=True)
    client.flush()
    client.pump()
    backend = proxy.accept()
    assert backend.received().endswith(b"\r\n\r\n4\r\nbody\r\n0\r\n\r\n")


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/pkg.Svc/Do", b"application/grpc-web"),  # gRPC-Web is not gRPC
        ("/pkg.Svc/Do", b"application/json"),
        ("/elsewhere/Do", b"application/grpc"),  # a plain route
    ],
)
def test_only_grpc_calls_on_grpc_routes_are_taken(proxy: InMemoryProxy, path: str, content_type: bytes) -> None:
    client = Client(proxy)
    stream = client.h2.get_next_available_stream_id()
    client.h2.send_headers(stream, [(b":method", b"POST"), (b":path", path.encode()), (b":scheme", b"http"),
                                    (b":authority", b"api.test"), (b"content-type", content_type)], end_stream=True)
    client.flush()
    client.pump()
    assert not isinstance(client.protocol.streams.get(stream), GrpcCall)
    assert proxy.core.h2_pool is None


def test_grpc_calls_with_a_charset_or_subtype_are_taken(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    for content_type in (b"application/grpc+proto", b"application/grpc;charset=utf-8"):
        stream = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream, [(b":method", b"POST"), (b":path", b"/pkg.Svc/Do"), (b":scheme", b"http"),
                                        (b":authority", b"api.test"), (b"content-type", content_type)])
        client.flush()
        client.pump()
        assert isinstance(client.protocol.streams[stream], GrpcCall)


def test_one_pool_per_worker_following_the_server_settings(proxy: InMemoryProxy) -> None:
    pool = grpc_pool(proxy.core)
    assert grpc_pool(proxy.core) is pool and proxy.core.h2_pool is pool
    assert (pool.connect_timeout, pool.idle_timeout) == (5.0, 60.0)
    proxy.core.apply_config(parse_config(CONFIG.replace("upstream_connect_timeout: 5s", "upstream_connect_timeout: 2s")))
    assert grpc_pool(proxy.core) is pool and pool.connect_timeout == 2.0


def test_calls_of_one_backend_share_a_connection(proxy: InMemoryProxy) -> None:
    client = Client(proxy)
    streams = [client.call() for _ in range(3)]
    backend = Backend(proxy)
    assert len(proxy.connects) == 1
    for index, stream in enumerate(streams):
        assert backend.request(2 * index + 1)[b":path"] == b"/pkg.Svc/Do"
    backend.respond(3, body=b"second")
    client.pump()
    assert client.answer(streams[1])["trailers"][b"grpc-status"] == b"0"
    assert client.answer(streams[0])["head"] is None


def test_an_operator_disconnect_also_ends_calls_on_a_draining_connection(proxy: InMemoryProxy) -> None:
    """A connection the backend sent a graceful GOAWAY takes no new calls but still
    carries the ones it took: ``disconnect`` ends those too, and closes it."""
    from hyperframe.frame import GoAwayFrame

    client = Client(proxy)
    stream = client.call(end=False)
    backend = Backend(proxy)
    backend.request()
    backend.memory.send(GoAwayFrame(0, last_stream_id=1, error_code=0).serialize())
    assert proxy.core.h2_pool.connections() == []  # draining: no new calls
    assert proxy.core.disconnect_backend("rpc", "g1") == 2
    client.pump()
    got = client.answer(stream)
    assert got["head"][b"grpc-status"] == b"14" and b"operator" in got["head"][b"grpc-message"]
    backend.pump()
    assert backend.reset_codes() == [ErrorCodes.CANCEL] and backend.memory.transport.disconnecting
