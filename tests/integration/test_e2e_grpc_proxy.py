"""gRPC proxying through a real 2-worker ``twistd speedproxy`` over h2c: a real
grpcio service behind it, a real grpcio client (and a frame-level HTTP/2
client where the exact answer matters) in front of it."""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest
import trustme

from grpc_proxy_support import EchoClient, EchoServer, pattern  # skips on PyPy / Python < 3.10

import grpc  # noqa: E402  (installed wherever grpc_proxy_support did not skip)
from h2.events import DataReceived, ResponseReceived, StreamEnded, TrailersReceived  # noqa: E402

from admin_support import AdminClient  # noqa: E402
from h2_support import H2Socket  # noqa: E402

from speedproxy.testing import ProxyProcess, check_config, free_port, wait_until  # noqa: E402

MiB = 1024 * 1024


def _config(echo_port: int, dead_port: int) -> Dict[str, Any]:
    return {
        "backends": {
            "echo": [{"id": "echo1", "host": "127.0.0.1", "port": echo_port, "scheme": "h2c"}],
            "down": [{"id": "gone", "host": "127.0.0.1", "port": dead_port, "scheme": "h2c"}],
        },
        "routing": {
            "echo": {"path": "/demo.Echo/", "upstream": "echo", "protocols": {"grpc": "least_connections"}},
            "down": {"path": "/down.Echo/", "upstream": "down", "protocols": {"grpc": "round_robin"}},
        },
    }


@pytest.fixture(scope="module")
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer(free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxy(module_stack: Any, echo_server: EchoServer) -> Any:
    web = module_stack.backend(name="web")
    return module_stack.proxy(web, config=_config(echo_server.port, free_port()), workers=2)


@pytest.fixture
def client(proxy: Any) -> Iterator[EchoClient]:
    made = EchoClient(proxy.port)
    try:
        yield made
    finally:
        made.close()


# -- the four kinds of call ------------------------------------------------------------


def test_unary_call_with_metadata_and_trailers(client: EchoClient) -> None:
    answer, call = client.unary(b"hello through the proxy")
    assert answer == b"hello through the proxy"
    assert ("x-echo-initial", "first") in call.initial_metadata()
    assert ("x-echo-trailer", "last") in call.trailing_metadata()
    assert call.code() == grpc.StatusCode.OK


def test_server_streaming(client: EchoClient) -> None:
    answers = list(client.count(50, 1000))
    assert answers == [pattern(1000, index) for index in range(50)]


def test_client_streaming(client: EchoClient) -> None:
    messages = [pattern(10_000, index) for index in range(30)]
    digest = hashlib.sha256(b"".join(messages)).hexdigest()
    assert client.digest(iter(messages)) == b"30:300000:" + digest.encode()


def test_bidirectional_interleaved(client: EchoClient) -> None:
    """Each answer comes back before the next message is sent: a real conversation."""
    outgoing: List[bytes] = []
    ready = threading.Event()
    done = threading.Event()

    def messages() -> Iterator[bytes]:
        for index in range(20):
            ready.clear()
            message = b"line %d" % index
            outgoing.append(message)
            yield message
            assert ready.wait(15), "no answer to the previous message"
        done.set()

    answers = []
    for answer in client.chat(messages()):
        answers.append(answer)
        ready.set()
    assert answers == [b"echo:" + message for message in outgoing] and len(answers) == 20
    assert done.is_set()


# -- statuses, trailers, deadlines, failures -----------------------------------------------


def test_status_and_details_relayed(client: EchoClient, proxy: Any) -> None:
    mark = proxy.log_mark()
    with pytest.raises(grpc.RpcError) as caught:
        client.unary(b"notfound:chair")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no such thing: chair"
    assert ("x-echo-trailer", "last") in caught.value.trailing_metadata()
    # Access-logged like any request: HTTP 200, the gRPC status beside it.
    line = proxy.wait_for_log(" grpc=5 ", since=mark)
    assert '"POST /demo.Echo/Unary HTTP/2.0" 200 ' in line and "upstream=127.0.0.1:" in line and " rid=" in line


def test_deadline_exceeded_cancels_the_backend_call(client: EchoClient) -> None:
    before = client.cancelled()
    with pytest.raises(grpc.RpcError) as caught:
        client.unary(b"sleep:10", timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The backend's call was cancelled (its handler saw it end), not left running.
    wait_until(lambda: client.cancelled() > before, timeout=10, what="the backend call cancelled")


def test_a_client_cancel_reaches_the_backend(client: EchoClient, proxy: Any) -> None:
    """No deadline anywhere: only the proxy's RST_STREAM tells the backend the call is over."""
    admin = AdminClient.of(proxy)
    before = client.cancelled()
    sleeping = client.sleeping()
    pending = client._method("unary_unary", "Unary").future(b"sleep:30")
    wait_until(
        lambda: admin.get("/upstream").json["upstreams"]["echo"]["backends"][0]["in_flight"] == 1,
        timeout=10, what="the call in flight",
    )
    # In flight at the proxy is not yet running at the backend: a cancel before
    # its handler started would leave nothing for the handler to see.
    wait_until(lambda: client.sleeping() > sleeping, timeout=10, what="the backend's handler started")
    assert pending.cancel()
    wait_until(lambda: client.cancelled() > before, timeout=10, what="the backend call cancelled")


def test_proxy_answers_deadline_exceeded_itself(proxy: Any) -> None:
    """A client that does not enforce its own deadline still gets DEADLINE_EXCEEDED
    (from the proxy's timer or the backend's, whichever comes first)."""
    h2 = H2Socket(proxy.port)
    try:
        ended = _raw_call(h2, "/demo.Echo/Unary", b"sleep:10", [(b"grpc-timeout", b"300m")])
    finally:
        h2.close()
    assert ended["trailers"].get(b"grpc-status") == b"4"


def test_backend_down_is_unavailable(client: EchoClient, proxy: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client.unary(b"anyone?", service="down.Echo")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "connection refused" in caught.value.details()
    # On the wire: a trailers-only answer, never an HTML or JSON body.
    h2 = H2Socket(proxy.port)
    try:
        ended = _raw_call(h2, "/down.Echo/Unary", b"anyone?")
    finally:
        h2.close()
    assert ended["status"] == 200 and ended["body"] == b"" and ended["trailers_only"]
    assert ended["trailers"][b"content-type"] == b"application/grpc"
    assert ended["trailers"][b"grpc-status"] == b"14"


def test_backend_killed_mid_stream_is_unavailable(module_stack: Any) -> None:
    """The backend process dies while a server stream is relayed: the client gets
    UNAVAILABLE after the messages relayed, not a hang; the next call is UNAVAILABLE too."""
    server = EchoServer(free_port()).start()
    proxy = module_stack.proxy(module_stack.backend(name="web2"), config=_config(server.port, free_port()), workers=1)
    client = EchoClient(proxy.port)
    try:
        stream = client.count(100000, 1000)
        assert next(stream) == pattern(1000, 0)
        server.stop()
        with pytest.raises(grpc.RpcError) as caught:
            for _ in stream:
                pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
        assert "lost" in caught.value.details()
        with pytest.raises(grpc.RpcError) as again:
            client.unary(b"still there?")
        assert again.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        client.close()
        server.stop()


def test_h2_backends_over_tls(tmp_path: Any) -> None:
    """``scheme: h2``: TLS with ALPN h2 to the backend, its certificate checked
    against the trust store (here: a test CA through ``SSL_CERT_FILE``)."""
    authority = trustme.CA()
    issued = authority.issue_cert("localhost", "127.0.0.1")
    cert, key, ca = tmp_path / "backend.crt", tmp_path / "backend.key", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    server = EchoServer(free_port(), str(cert), str(key)).start()
    config = _config(server.port, free_port())
    config["backends"]["echo"][0]["scheme"] = "h2"
    config["backends"]["web"] = [{"id": "w", "host": "127.0.0.1", "port": free_port()}]
    config["routing"]["default"] = {"path": "/", "upstream": "web"}
    proxy = ProxyProcess(config, directory=tmp_path / "proxy", env={"SSL_CERT_FILE": str(ca)})
    client = None
    try:
        proxy.start()
        client = EchoClient(proxy.port)
        answer, call = client.unary(b"over TLS")
        assert answer == b"over TLS" and call.code() == grpc.StatusCode.OK
        assert list(client.count(3, 10)) == [pattern(10, index) for index in range(3)]
    finally:
        if client is not None:
            client.close()
        proxy.stop(timeout=5.0)
        server.stop()


def test_h2_backend_with_an_untrusted_certificate_is_unavailable(tmp_path: Any) -> None:
    authority = trustme.CA()
    issued = authority.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "backend.crt", tmp_path / "backend.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    server = EchoServer(free_port(), str(cert), str(key)).start()
    config = _config(server.port, free_port())
    config["backends"]["echo"][0]["scheme"] = "h2"
    config["backends"]["web"] = [{"id": "w", "host": "127.0.0.1", "port": free_port()}]
    config["routing"]["default"] = {"path": "/", "upstream": "web"}
    proxy = ProxyProcess(config, directory=tmp_path / "proxy")
    client = None
    try:
        proxy.start()
        client = EchoClient(proxy.port)
        with pytest.raises(grpc.RpcError) as caught:
            client.unary(b"over TLS")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if client is not None:
            client.close()
        proxy.stop(timeout=5.0)
        server.stop()


# -- flow control ------------------------------------------------------------------------


def test_large_messages_both_ways(client: EchoClient) -> None:
    answer, _ = client.unary(b"big:%d" % (6 * MiB))
    assert len(answer) == 6 * MiB and answer == pattern(6 * MiB)
    streamed = list(client.count(8, MiB))
    assert [len(part) for part in streamed] == [MiB] * 8 and streamed[3] == pattern(MiB, 3)
    upload = [pattern(MiB, index) for index in range(8)]
    digest = hashlib.sha256(b"".join(upload)).hexdigest()
    assert client.digest(iter(upload)) == b"8:%d:%s" % (8 * MiB, digest.encode())


def test_more_concurrent_calls_than_one_connection_carries(client: EchoClient) -> None:
    """More calls at once than one backend connection's streams: all answered."""
    futures = [client._method("unary_unary", "Unary").future(b"call %d" % index, timeout=15) for index in range(150)]
    assert [future.result() for future in futures] == [b"call %d" % index for index in range(150)]


def test_calls_are_counted_per_backend(client: EchoClient, proxy: Any) -> None:
    """A call in flight counts against its backend (what balancers and max_conn see), across workers."""
    admin = AdminClient.of(proxy)

    def echo1() -> Dict[str, Any]:
        return admin.get("/upstream").json["upstreams"]["echo"]["backends"][0]

    before = echo1()["requests"]
    pending = client._method("unary_unary", "Unary").future(b"sleep:2", timeout=15)
    wait_until(lambda: echo1()["in_flight"] == 1, timeout=10, what="the call in flight")
    assert pending.result() == b"slept"
    wait_until(lambda: echo1()["in_flight"] == 0, timeout=10, what="the call over")
    wait_until(lambda: echo1()["requests"] >= before + 1, timeout=10, what="the call counted")


def test_admin_disconnect_ends_the_backends_calls(client: EchoClient, proxy: Any) -> None:
    admin = AdminClient.of(proxy)
    pending = client._method("unary_unary", "Unary").future(b"sleep:10", timeout=15)
    wait_until(
        lambda: admin.get("/upstream").json["upstreams"]["echo"]["backends"][0]["in_flight"] == 1,
        timeout=10, what="the call in flight",
    )
    answer = admin.post("/api/v1/backends/disconnect?upstream=echo&backend_id=echo1")
    assert answer.status == 200 and answer.json["closed"] >= 1, answer
    with pytest.raises(grpc.RpcError) as caught:
        pending.result(timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "operator" in caught.value.details()
    assert client.unary(b"next one")[0] == b"next one"  # the backend still serves


# -- the rest of the proxy ---------------------------------------------------------------------


def test_plain_requests_on_a_grpc_route_are_refused(proxy: Any, curl: str) -> None:
    import subprocess

    done = subprocess.run(
        [curl, "-sS", "-o", "-", "-w", "\n%{http_code}", f"http://127.0.0.1:{proxy.port}/demo.Echo/Unary"],
        capture_output=True, timeout=30,
    )
    body, _, status = done.stdout.decode().rpartition("\n")
    assert status == "415" and '"grpc_only"' in body
    # Other routes are untouched, over HTTP/2 too.
    h2 = H2Socket(proxy.port)
    try:
        status_code, _ = h2.get("/anything")
    finally:
        h2.close()
    assert status_code == 200


def test_check_explains_grpc_mistakes(tmp_path: Any) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "backends:\n"
        "  web: [{id: w1, host: 127.0.0.1, port: 8081}]\n"
        "  grpc: [{id: g1, host: 127.0.0.1, port: 50051, scheme: h2c}]\n"
        "routing:\n"
        "  default: {path: /, upstream: web}\n"
        "  api:\n"
        "    path: /pkg.Svc/\n"
        "    upstream: web\n"
        "    protocols: {grpc: round_robin}\n"
        "  other: {path: /other/, upstream: grpc}\n"
        "  typo: {path: /typo/, upstream: grpc, protocols: {grpc: fastest}}\n"
        "upstreams:\n"
        "  grpc: {set_headers: {authorization: Bearer-x}}\n"
    )
    result = check_config(path)
    assert result.returncode == 1, result.stdout
    out = result.stdout
    assert "bad.yaml:9: routing.api.protocols.grpc: a gRPC route needs backends with scheme h2c or h2" in out
    assert "bad.yaml:10: routing.other.upstream: upstream 'grpc' has HTTP/2 backends" in out
    assert "bad.yaml:11: routing.typo.protocols.grpc: unknown load balancer 'fastest'" in out
    assert "bad.yaml:13: upstreams.grpc.set_headers: not applied to gRPC calls" in out


# -- a frame-level client ------------------------------------------------------------------


def _raw_call(h2: H2Socket, path: str, message: bytes, extra: Any = (), deadline: float = 15.0) -> Dict[str, Any]:
    """One unary gRPC call frame by frame; what came back."""
    stream_id = h2.h2.get_next_available_stream_id()
    headers = h2.headers(path, "POST", [(b"content-type", b"application/grpc"), (b"te", b"trailers"), *extra])
    h2.h2.send_headers(stream_id, headers)
    h2.h2.send_data(stream_id, b"\0" + len(message).to_bytes(4, "big") + message, end_stream=True)
    h2.flush()
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        if any(isinstance(event, StreamEnded) and event.stream_id == stream_id for event in h2.events):
            break
        assert h2.read(0.2), "the proxy closed the connection"
    result: Dict[str, Any] = {"status": 0, "body": b"", "trailers": {}, "trailers_only": False}
    for event in h2.events:
        if getattr(event, "stream_id", None) != stream_id:
            continue
        if isinstance(event, ResponseReceived):
            fields = dict(event.headers)
            result["status"] = int(fields[b":status"])
            if event.stream_ended is not None:
                result["trailers_only"] = True
                result["trailers"] = fields
        elif isinstance(event, DataReceived):
            result["body"] += event.data
        elif isinstance(event, TrailersReceived):
            result["trailers"] = dict(event.headers)
        elif isinstance(event, StreamEnded):
            result["ended"] = True
    assert result.get("ended"), f"stream {stream_id} not answered"
    return result
