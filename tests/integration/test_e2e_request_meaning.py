"""One meaning per request: authority, path, prompt refusals and Upgrade, end to end.

Raw requests go to a real ``twistd speedproxy`` (2 workers, default server
settings) in front of raw backends that record the exact bytes they get.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Dict, List

import pytest

from speedproxy.testing import RawClient, RawResponse, backend_entry

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Recorder:
    """A raw backend handler that records each request head and answers 200."""

    def __init__(self) -> None:
        self.heads: List[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, sock: socket.socket, stopping: threading.Event) -> None:
        sock.settimeout(0.2)
        data = b""
        while not stopping.is_set():
            end = data.find(b"\r\n\r\n")
            if end < 0:
                try:
                    piece = sock.recv(65536)
                except socket.timeout:
                    continue
                if not piece:
                    return
                data += piece
                continue
            head, data = data[: end + 4], data[end + 4 :]
            length = header(head, b"Content-Length")
            size = int(length[0]) if length else 0
            while len(data) < size:  # the body (Content-Length only here)
                piece = sock.recv(65536)
                if not piece:
                    return
                data += piece
            data = data[size:]
            with self._lock:
                self.heads.append(head)
            sock.sendall(OK)

    def reset(self) -> None:
        with self._lock:
            self.heads.clear()

    def only_head(self) -> bytes:
        assert len(self.heads) == 1, self.heads
        return self.heads[0]


def request_line(head: bytes) -> bytes:
    return head.split(b"\r\n", 1)[0]


def header(head: bytes, name: bytes) -> List[bytes]:
    values = []
    for line in head.split(b"\r\n")[1:]:
        field, sep, value = line.partition(b":")
        if sep and field.lower() == name.lower():
            values.append(value.strip())
    return values


@pytest.fixture(scope="module")
def site(module_stack):
    """Routes ``/`` (main), ``/admin/`` (admin) and host ``other.example`` (other)."""
    recorders = {name: Recorder() for name in ("main", "admin", "other")}
    servers = {name: module_stack.raw_backend(recorder, name=name) for name, recorder in recorders.items()}
    config: Dict[str, Any] = {
        "backends": {name: [backend_entry(server, id=name)] for name, server in servers.items()},
        "routing": {
            "main": {"path": "/", "upstream": "main"},
            "admin": {"path": "/admin/", "upstream": "admin"},
            "other": {"path": "/", "host": "other.example", "upstream": "other"},
            "nows": {"path": "/nows/", "upstream": "main", "protocols": {"websocket": "off"}},
        },
    }
    proxy = module_stack.proxy(config=config)
    return proxy, recorders


def send(proxy, data: bytes, closes: bool = False) -> RawResponse:
    with RawClient(*proxy.address, timeout=5.0) as client:
        client.send(data)
        response = client.read_response()
        if closes:
            assert client.wait_closed(5.0) == b""
        return response


def reset(recorders) -> None:
    for recorder in recorders.values():
        recorder.reset()


def nothing_forwarded(recorders) -> bool:
    return all(not recorder.heads for recorder in recorders.values())


# -- authority ------------------------------------------------------------------


def test_absolute_target_authority_wins_over_host(site) -> None:
    proxy, recorders = site
    reset(recorders)
    response = send(proxy, b"GET http://other.example/x?q=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert response.status == 200
    # Routed on the authority (the host-only route), forwarded in origin-form
    # with the authority as Host; the main backend saw nothing.
    head = recorders["other"].only_head()
    assert request_line(head) == b"GET /x?q=1 HTTP/1.1"
    assert header(head, b"Host") == [b"other.example"]
    assert header(head, b"X-Forwarded-Host") == [b"other.example"]
    assert not recorders["main"].heads


def test_absolute_target_without_path(site) -> None:
    proxy, recorders = site
    reset(recorders)
    assert send(proxy, b"GET HTTP://Other.Example:8080 HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
    head = recorders["other"].only_head()
    assert request_line(head) == b"GET / HTTP/1.1"
    assert header(head, b"Host") == [b"Other.Example:8080"]


@pytest.mark.parametrize(
    "target,detail",
    [
        (b"ftp://other.example/x", "unsupported scheme"),
        (b"http://user:secret@other.example/x", "userinfo"),
    ],
)
def test_bad_absolute_targets_refused(site, target: bytes, detail: str) -> None:
    proxy, recorders = site
    reset(recorders)
    response = send(proxy, b"GET " + target + b" HTTP/1.1\r\nHost: other.example\r\n\r\n", closes=True)
    assert response.status == 400
    assert detail in response.json()["detail"]
    assert nothing_forwarded(recorders)


@pytest.mark.parametrize(
    "data",
    [b"GET /x HTTP/1.1\r\n\r\n", b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"],
    ids=["no-host", "two-hosts"],
)
def test_host_required_once(site, data: bytes) -> None:
    proxy, recorders = site
    reset(recorders)
    assert send(proxy, data, closes=True).status == 400
    assert nothing_forwarded(recorders)


# -- path -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target,route,forwarded",
    [
        (b"/public/../admin/x", "admin", b"/admin/x"),
        (b"/public/%2e%2e/admin/x", "admin", b"/admin/x"),
        (b"/admin/./y/../z?a=%2e", "admin", b"/admin/z?a=%2e"),
        (b"/%61dmin/x", "admin", b"/admin/x"),
        (b"/a/%7euser/%c3%a9", "main", b"/a/~user/%C3%A9"),
        (b"/a//b", "main", b"/a//b"),
    ],
)
def test_path_normalised_before_routing_and_forwarded(site, target: bytes, route: str, forwarded: bytes) -> None:
    proxy, recorders = site
    reset(recorders)
    assert send(proxy, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n").status == 200
    assert request_line(recorders[route].only_head()) == b"GET " + forwarded + b" HTTP/1.1"
    assert sum(len(recorder.heads) for recorder in recorders.values()) == 1


@pytest.mark.parametrize(
    "target,detail",
    [
        (b"/../admin/x", "climbs above the root"),
        (b"/a/../../etc/passwd", "climbs above the root"),
        (b"/a%00b", "%00"),
        (b"/a%2fb", "encoded '/'"),
        (b"/a%5Cb", "encoded '/' or '\\'"),
        (b"/a%0db", "control character"),
        (b"/a%zz", "malformed percent-encoding"),
    ],
)
def test_bad_paths_refused(site, target: bytes, detail: str) -> None:
    proxy, recorders = site
    reset(recorders)
    response = send(proxy, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n", closes=True)
    assert response.status == 400
    assert detail in response.json()["detail"]
    assert nothing_forwarded(recorders)


def test_path_options(module_stack) -> None:
    """merge_slashes, escaped_slashes: keep and forward_original_path."""
    recorder = Recorder()
    origin = module_stack.raw_backend(recorder, name="options")
    config = {
        "backends": {"o": [backend_entry(origin, id="o")]},
        "routing": {"r": {"path": "/app/", "upstream": "o"}},
        "server": {"merge_slashes": True, "escaped_slashes": "keep", "forward_original_path": True},
    }
    proxy = module_stack.proxy(config=config)
    # Routed on the normalised form, forwarded as sent.
    assert send(proxy, b"GET //app///x/../y%2Fz HTTP/1.1\r\nHost: h\r\n\r\n").status == 200
    assert request_line(recorder.only_head()) == b"GET //app///x/../y%2Fz HTTP/1.1"
    # Without merge_slashes, //app/ would not have matched the route.
    recorder.reset()
    assert send(proxy, b"GET /zzz HTTP/1.1\r\nHost: h\r\n\r\n").status == 404
    assert not recorder.heads


# -- prompt refusal -------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,status",
    [
        (b"GET /x HTTP/1.1\nHost: h\n\n", 400),
        (b"GET /x\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: h\r\nX: a\nY: b\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: a\x00b\r\n", 400),
        (b"GET /x HTTP/1.1\rHost: h\r\n", 400),
        (b"GET /x HTTP/3.0\r\n", 505),
        (b"GET /x HTTP/1.1\r\nNo colon here\r\n", 400),
        (b"GET /" + b"a" * 20000, 414),
    ],
    ids=["bare-lf", "http09", "bare-lf-in-field", "nul", "bare-cr", "version", "no-colon", "long-line"],
)
def test_malformed_heads_refused_at_once(site, data: bytes, status: int) -> None:
    """Answered as soon as the bad line is seen; read_timeout is the default 30 s
    and the client gives up after 5 s, so waiting for a timeout fails here."""
    proxy, recorders = site
    reset(recorders)
    response = send(proxy, data, closes=True)
    assert response.status == status
    assert response.json()["error"]
    assert nothing_forwarded(recorders)


def test_head_split_over_packets_still_served(site) -> None:
    proxy, recorders = site
    reset(recorders)
    with RawClient(*proxy.address, timeout=5.0) as client:
        for piece in (b"GE", b"T /pi", b"eces HTTP/1.1\r", b"\nHost: h\r\nX-A: 1", b"\r\n\r", b"\n"):
            client.send(piece)
            if piece != b"\n":
                assert client.read_available(0.05) == b""
        assert client.read_response().status == 200
    assert request_line(recorders["main"].only_head()) == b"GET /pieces HTTP/1.1"


# -- Upgrade ---------------------------------------------------------------------------

UPGRADE = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


def test_upgrade_on_post_is_dropped(site) -> None:
    proxy, recorders = site
    reset(recorders)
    data = b"POST /ws HTTP/1.1\r\nHost: h\r\n" + UPGRADE + b"Content-Length: 2\r\n\r\nhi"
    assert send(proxy, data).status == 200
    head = recorders["main"].only_head()
    assert request_line(head) == b"POST /ws HTTP/1.1"
    assert header(head, b"Upgrade") == []
    assert b"upgrade" not in b",".join(header(head, b"Connection")).lower()


def test_upgrade_on_get_is_forwarded(site) -> None:
    proxy, recorders = site
    reset(recorders)
    # The recorder answers 200, not 101: the handshake is refused by the
    # backend, but what it received is the upgrade request.
    assert send(proxy, b"GET /ws HTTP/1.1\r\nHost: h\r\n" + UPGRADE + b"\r\n").status == 200
    head = recorders["main"].only_head()
    assert header(head, b"Upgrade") == [b"websocket"]
    assert header(head, b"Connection") == [b"Upgrade"]


def test_upgrade_not_forwarded_where_route_disallows_websocket(site) -> None:
    proxy, recorders = site
    reset(recorders)
    assert send(proxy, b"GET /nows/x HTTP/1.1\r\nHost: h\r\n" + UPGRADE + b"\r\n").status == 200
    head = recorders["main"].only_head()
    assert request_line(head) == b"GET /nows/x HTTP/1.1"
    assert header(head, b"Upgrade") == []
