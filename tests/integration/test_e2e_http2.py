"""HTTP/2 to clients through a real ``twistd speedproxy``: curl, h2load, the
cache, and the known HTTP/2 attacks (each closes only the attacking connection)."""

from __future__ import annotations

import hashlib
import re
import subprocess

import pytest
import trustme
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import ContinuationFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame

from h2_support import H2Socket, curl, ensure_curl, ensure_h2load, ws_frame, ws_messages

from speedproxy.testing import HTTPBackend, backend_entry, fixed_body, pattern_sha256, upload_digest
from speedproxy.testing.http_backend import delayed

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    server = authority.issue_cert("localhost", "127.0.0.1")
    cert, key, ca = directory / "server.crt", directory / "server.key", directory / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    return cert, key, ca


def _origin(stack) -> HTTPBackend:
    origin = stack.backend(fixed_body(1024), name="origin")
    origin.route("/big", fixed_body(3 * 1024 * 1024))
    origin.route("/upload", upload_digest())
    return origin


@pytest.fixture(scope="module")
def tls_proxy(module_stack, tls_files):
    cert, key, _ = tls_files
    return module_stack.proxy(
        _origin(module_stack),
        config={"ssl": {"enabled": True, "cert_file": str(cert), "key_file": str(key)}},
        workers=2,
    )


@pytest.fixture(scope="module")
def plain_proxy(module_stack):
    return module_stack.proxy(_origin(module_stack), workers=2)


# -- real clients --------------------------------------------------------------------


def test_curl_http2_over_tls(tls_proxy, tls_files) -> None:
    _, _, ca = tls_files
    url = f"https://localhost:{tls_proxy.port}"
    options = ("--http2", "--cacert", str(ca), "--resolve", f"localhost:{tls_proxy.port}:127.0.0.1")
    small = curl(url + "/small", *options)
    assert (small.status, small.version, len(small.body)) == (200, "2", 1024)
    assert small.headers["x-speedproxy"] and small.headers["x-request-id"]
    assert "connection" not in small.headers and "transfer-encoding" not in small.headers
    big = curl(url + "/big", *options)  # many windows' worth: flow control both ways
    assert big.version == "2" and hashlib.sha256(big.body).hexdigest() == pattern_sha256(3 * 1024 * 1024)
    payload = bytes(range(256)) * 2048  # 512 KiB up
    upload = subprocess.run(
        [ensure_curl(), "-sS", "--max-time", "20", *options, "--data-binary", "@-", url + "/upload"],
        input=payload, capture_output=True, timeout=30,
    )
    assert upload.returncode == 0, upload.stderr
    assert hashlib.sha256(payload).hexdigest() in upload.stdout.decode()
    # ALPN still offers HTTP/1.1 on the same port.
    old = curl(url + "/small", "--http1.1", "--cacert", str(ca), "--resolve", f"localhost:{tls_proxy.port}:127.0.0.1")
    assert (old.status, old.version) == (200, "1.1")


def test_curl_h2c_prior_knowledge(plain_proxy) -> None:
    small = curl(plain_proxy.url + "/small", "--http2-prior-knowledge")
    assert (small.status, small.version, len(small.body)) == (200, "2", 1024)
    big = curl(plain_proxy.url + "/big", "--http2-prior-knowledge")
    assert hashlib.sha256(big.body).hexdigest() == pattern_sha256(3 * 1024 * 1024)
    missing = curl(plain_proxy.url + "/%2Fetc", "--http2-prior-knowledge")
    assert missing.status == 400 and b'"bad_request"' in missing.body
    old = curl(plain_proxy.url + "/small")  # HTTP/1.1 on the same port, unchanged
    assert (old.status, old.version) == (200, "1.1")


@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "h2"])
def test_h2load_bounded_load(tls_proxy, plain_proxy, tls_files, tls: bool) -> None:
    h2load = ensure_h2load()
    url = f"https://127.0.0.1:{tls_proxy.port}/small" if tls else plain_proxy.url + "/small"
    done = subprocess.run(
        [h2load, "-n", "2000", "-c", "10", "-m", "10", "-T", "20", url],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert ("Application protocol: h2" if tls else "Application protocol: h2c") in done.stdout, done.stdout
    assert re.search(r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded", done.stdout), done.stdout
    assert "status codes: 2000 2xx" in done.stdout


def test_a_cached_route_answers_over_http2(stack) -> None:
    origin = stack.backend(fixed_body(4096), name="origin")
    proxy = stack.proxy(
        config={
            "backends": {"default": [backend_entry(origin, id="o1")]},
            "routing": {"default": {"path": "/", "upstream": "default", "cache": {"enabled": True, "default_ttl": "1h"}}},
        },
        workers=2,
    )
    client = H2Socket(proxy.port)  # one connection: one worker, one memory tier
    try:
        first_status, first = client.get("/cached.bin")
        second_status, second = client.get("/cached.bin")
    finally:
        client.close()
    assert (first_status, second_status) == (200, 200) and first == second and len(first) == 4096
    hits = [event for event in client.events if type(event).__name__ == "ResponseReceived"]
    statuses = [dict(event.headers).get(b"cache-status", b"") for event in hits]
    assert b"hit" in statuses[1] and b"hit" not in statuses[0], statuses
    assert len([r for r in origin.requests if r.path == "/cached.bin"]) == 1


# -- attacks: the attacker's connection is closed, others go on ------------------------


@pytest.fixture(scope="module")
def guarded_proxy(module_stack):
    origin = module_stack.backend(fixed_body(1024), name="origin")
    origin.route("/big", fixed_body(1024 * 1024))
    # One worker: the attacker and the bystander share its reactor.
    return module_stack.proxy(origin, workers=1, write_timeout="1s", max_header_size="8KiB")


@pytest.fixture
def guarded(guarded_proxy):
    guarded_proxy.mark = guarded_proxy.log_mark()
    return guarded_proxy


def _bystander_fine(proxy, bystander: H2Socket) -> None:
    """A client on the same worker, connected before the attack, is still served."""
    assert bystander.get("/after")[0] == 200
    assert not bystander.closed and bystander.goaway() is None
    assert curl(proxy.url + "/fresh", "--http2-prior-knowledge").status == 200


def _attack(proxy, frames_sent) -> H2Socket:
    bystander = H2Socket(proxy.port)
    assert bystander.get("/before")[0] == 200
    attacker = H2Socket(proxy.port)
    frames_sent(attacker)
    assert attacker.wait_closed(10.0), "the attacking connection stayed open"
    _bystander_fine(proxy, bystander)
    bystander.close()
    attacker.close()
    return attacker


def test_rapid_reset_closes_the_attacker(guarded) -> None:
    def flood(attacker: H2Socket) -> None:
        for _ in range(2000):
            stream_id = attacker.h2.get_next_available_stream_id()
            attacker.h2.send_headers(stream_id, attacker.headers("/slow"), end_stream=True)
            attacker.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
            if not attacker.send_raw(attacker.h2.data_to_send()):
                return

    attacker = _attack(guarded, flood)
    assert attacker.goaway() in (None, ErrorCodes.ENHANCE_YOUR_CALM)
    guarded.wait_for_log("RST_STREAM flood", timeout=5, since=guarded.mark)


@pytest.mark.parametrize("kind", ["settings", "ping"])
def test_control_frame_floods_close_the_attacker(guarded, kind: str) -> None:
    def flood(attacker: H2Socket) -> None:
        for index in range(1000):
            if kind == "settings":
                frame = SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 16384})
            else:
                frame = PingFrame(0, opaque_data=b"%08d" % index)
            if not attacker.send_raw(frame.serialize()):
                return

    _attack(guarded, flood)
    guarded.wait_for_log(f"{kind.upper()} flood", timeout=5, since=guarded.mark)


def test_a_continuation_flood_closes_the_attacker(guarded) -> None:
    def flood(attacker: H2Socket) -> None:
        block = attacker.h2.encoder.encode(attacker.headers("/"))
        attacker.send_raw(HeadersFrame(1, data=block).serialize())
        filler = attacker.h2.encoder.encode([(b"x-filler", b"f" * 100)])
        for _ in range(10_000):
            if not attacker.send_raw(ContinuationFrame(1, data=filler).serialize()):
                return

    _attack(guarded, flood)
    guarded.wait_for_log("Too many continuation frames", timeout=5, since=guarded.mark)


def test_an_hpack_bomb_closes_the_attacker(guarded) -> None:
    def bomb(attacker: H2Socket) -> None:
        encoder = attacker.h2.encoder
        # 4 KiB into the dynamic table, then 200 one-byte references: 800 KiB decoded.
        block = encoder.encode(attacker.headers("/") + [(b"x-bomb", b"b" * 4000)])
        attacker.send_raw(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        block = encoder.encode(attacker.headers("/") + [(b"x-bomb", b"b" * 4000)] * 200)
        assert len(block) < 1000
        attacker.send_raw(HeadersFrame(3, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())

    attacker = _attack(guarded, bomb)
    assert attacker.goaway() in (None, ErrorCodes.ENHANCE_YOUR_CALM)
    guarded.wait_for_log("Oversized header block", timeout=5, since=guarded.mark)


def test_a_zero_window_stall_is_timed_out(guarded) -> None:
    def stall(attacker: H2Socket) -> None:
        # Asks for 1 MiB and never opens its connection window past the first 64 KiB.
        stream_id = attacker.h2.get_next_available_stream_id()
        attacker.h2.send_headers(stream_id, attacker.headers("/big"), end_stream=True)
        attacker.flush()
        attacker.acking = False  # reads, but never gives window back

    _attack(guarded, stall)
    guarded.wait_for_log("window stalled", timeout=5, since=guarded.mark)


def test_a_zero_stream_window_resets_only_that_stream(guarded) -> None:
    client = H2Socket(guarded.port, settings={SettingCodes.INITIAL_WINDOW_SIZE: 0})
    try:
        stream_id = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream_id, client.headers("/big"), end_stream=True)
        client.flush()
        for _ in range(40):  # bounded: ~8 s at most, write_timeout is 1 s
            client.read(0.2)
            if client.response(stream_id)[2]:
                break
        assert client.response(stream_id)[2], "the stalled stream was never reset"
        assert not client.closed
    finally:
        client.close()


# -- stream limits, malformed paths, the client's GOAWAY --------------------------------


@pytest.fixture(scope="module")
def limited_proxy(module_stack):
    origin = module_stack.backend(fixed_body(1024), name="origin")
    origin.route("/slow", delayed(0.5, fixed_body(2048)))
    return module_stack.proxy(origin, workers=1, h2_max_concurrent_streams=2)


def _read_until(client: H2Socket, done, deadline: float = 10.0) -> None:
    for _ in range(int(deadline / 0.2)):  # bounded
        if done() or not client.read(0.2):
            return


def test_a_stream_over_the_limit_is_refused_alone(limited_proxy) -> None:
    client = H2Socket(limited_proxy.port)
    try:
        # Three streams in the first flight, before the proxy's SETTINGS (limit 2) are read.
        streams = []
        for _ in range(3):
            stream_id = client.h2.get_next_available_stream_id()
            client.h2.send_headers(stream_id, client.headers("/slow"), end_stream=True)
            streams.append(stream_id)
        client.flush()
        _read_until(client, lambda: all(client.response(stream_id)[2] for stream_id in streams))
        refused = [event for event in client.events if type(event).__name__ == "StreamReset"]
        assert [(event.stream_id, event.error_code) for event in refused] == [(streams[2], ErrorCodes.REFUSED_STREAM)]
        assert [(client.response(stream_id)[0], len(client.response(stream_id)[1])) for stream_id in streams[:2]] \
            == [(200, 2048)] * 2
        assert not client.closed and client.goaway() is None
        assert client.get("/again")[0] == 200  # the client retries: served
    finally:
        client.close()


def test_an_absolute_form_path_gets_400_on_its_stream(limited_proxy) -> None:
    client = H2Socket(limited_proxy.port)
    try:
        client.h2.config.validate_outbound_headers = False
        stream_id = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream_id, [(b":method", b"GET"), (b":path", b"http://elsewhere.test/x"),
                                           (b":scheme", b"http"), (b":authority", b"localhost")], end_stream=True)
        client.flush()
        _read_until(client, lambda: client.response(stream_id)[2])
        status, body, ended = client.response(stream_id)
        assert (status, ended) == (400, True) and b"origin form" in body
        assert client.get("/small")[0] == 200 and not client.closed
    finally:
        client.close()


def test_a_client_goaway_lets_its_open_streams_finish(limited_proxy) -> None:
    client = H2Socket(limited_proxy.port)
    try:
        stream_id = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream_id, client.headers("/slow"), end_stream=True)
        client.flush()
        # GOAWAY past the h2 client library, which would stop reading after it.
        client.send_raw(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR).serialize())
        assert client.wait_closed(10.0)
        status, body, ended = client.response(stream_id)
        assert (status, len(body), ended) == (200, 2048, True)
    finally:
        client.close()


# -- WebSocket over HTTP/2 (RFC 8441) --------------------------------------------------


def test_websocket_over_http2_echoes_through_the_proxy(stack, tmp_path) -> None:
    from balancing_support import WebSocketServer

    (tmp_path / "ws").mkdir()
    server = WebSocketServer(tmp_path / "ws").start()
    try:
        proxy = stack.proxy(
            config={
                "backends": {"ws": [backend_entry(("127.0.0.1", server.port), id="ws1")]},
                "routing": {"ws": {"path": "/ws", "upstream": "ws", "protocols": {"websocket": "round_robin"}}},
            },
            workers=2,
        )
        client = H2Socket(proxy.port)
        client.read(1.0)  # the proxy's SETTINGS
        assert client.h2.remote_settings.enable_connect_protocol == 1
        client.h2.config.validate_outbound_headers = False
        stream = client.h2.get_next_available_stream_id()
        client.h2.send_headers(stream, [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                                        (b":path", b"/ws/h2"), (b":authority", b"localhost"),
                                        (b"sec-websocket-version", b"13")])
        client.flush()
        for _ in range(50):
            status, _, _ = client.response(stream)
            if status:
                break
            client.read(0.2)
        assert client.response(stream)[0] == 200
        data = ws_frame(b"hello over h2") + ws_frame(bytes(range(256)) * 100, 0x2)
        for start in range(0, len(data), 16384):
            client.h2.send_data(stream, data[start : start + 16384])
        client.flush()
        for _ in range(50):
            messages = ws_messages(client.response(stream)[1])
            if len(messages) == 2:
                break
            client.read(0.2)
        assert messages == [(0x1, b"hello over h2"), (0x2, bytes(range(256)) * 100)]
        opened = server.wait_event("open", "/ws/h2")
        assert "speedproxy" in {k.lower(): v for k, v in opened["headers"].items()}.get("via", "")
        client.h2.send_data(stream, ws_frame(b"close-me"))  # the server closes: so does the stream
        client.flush()
        for _ in range(50):
            if client.response(stream)[2]:
                break
            client.read(0.2)
        assert client.response(stream)[2]
        client.close()
    finally:
        server.stop()
