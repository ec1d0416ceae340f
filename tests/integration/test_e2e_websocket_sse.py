"""WebSocket tunnels and server-sent events through a real proxy process.

The WebSocket ends are real autobahn peers (echo server and client), each
in a subprocess with its own reactor (see ``balancing_support.py``): the
test process runs no reactor.  SSE comes from a threaded test backend that
emits events 500 ms apart; the client is a raw socket that timestamps them.
"""

from __future__ import annotations

import time
from typing import Any, Dict

import pytest

from speedproxy.testing import RawClient, backend_entry

from balancing_support import ECHO_SIZE, TEXT, SSEOrigin, WebSocketServer, read_events, run_ws_client

SERVER: Dict[str, Any] = {"workers": 2, "access_log": "off"}


@pytest.fixture(scope="module")
def ws(module_stack, tmp_path_factory) -> Dict[str, Any]:
    server = WebSocketServer(tmp_path_factory.mktemp("ws")).start()
    http = module_stack.backend(name="http")
    config = {
        "server": SERVER,
        "backends": {
            "ws": [backend_entry(("127.0.0.1", server.port), id="ws1")],
            "web": [backend_entry(http, id="web1")],
        },
        "routing": {
            "ws": {"path": "/ws", "upstream": "ws", "load_balancer": "round_robin",
                   "protocols": {"websocket": "round_robin", "sse": "round_robin"}},
            "web": {"path": "/", "upstream": "web", "load_balancer": "round_robin"},
        },
    }
    try:
        proxy = module_stack.proxy(config=config)
        report = run_ws_client(f"ws://127.0.0.1:{proxy.port}/ws",
                               ["echo", "server-close", "server-drop", "client-drop"])
        yield {"proxy": proxy, "server": server, "report": report}
    finally:
        server.stop()


def test_websocket_echo_of_1mib_in_64kib_frames_and_a_text_frame(ws) -> None:
    echo = ws["report"]["echo"]
    assert echo.get("opened"), echo
    assert echo["echo_size"] == ECHO_SIZE
    assert echo["echo_match"], "the 1 MiB binary message came back altered"
    assert echo["texts"] == [TEXT]
    opened = ws["server"].wait_event("open", "/ws/echo")
    headers = {name.lower(): value for name, value in opened["headers"].items()}
    assert "speedproxy" in headers.get("via", ""), f"the handshake did not go through the proxy: {headers}"


def test_client_close_reaches_the_server(ws) -> None:
    echo = ws["report"]["echo"]
    assert echo["wasClean"] and echo["code"] == 1000, echo
    assert echo["close_seconds"] < 2.0, echo
    closed = ws["server"].wait_event("closed", "/ws/echo")
    assert closed["wasClean"] and closed["code"] == 1000 and closed["reason"] == "client bye", closed


def test_server_close_reaches_the_client(ws) -> None:
    outcome = ws["report"]["server-close"]
    assert outcome.get("opened") and not outcome.get("timeout"), outcome
    assert outcome["wasClean"] and outcome["code"] == 4000 and outcome["reason"] == "server bye", outcome
    assert outcome["close_seconds"] < 2.0, outcome
    assert ws["server"].wait_event("closed", "/ws/server-close")["wasClean"]


def test_server_dropping_tcp_closes_the_client(ws) -> None:
    outcome = ws["report"]["server-drop"]
    assert outcome.get("opened") and not outcome.get("timeout"), outcome
    assert not outcome["wasClean"], outcome
    assert outcome["close_seconds"] < 2.0, outcome


def test_client_dropping_tcp_closes_the_server_side(ws) -> None:
    outcome = ws["report"]["client-drop"]
    assert outcome.get("opened") and not outcome.get("timeout"), outcome
    closed = ws["server"].wait_event("closed", "/ws/client-drop", timeout=3.0)
    assert not closed["wasClean"], closed
    opened = ws["server"].wait_event("open", "/ws/client-drop")
    assert closed["t"] - opened["t"] < 2.0, (opened, closed)


def test_plain_http_still_served_next_to_websockets(ws) -> None:
    with RawClient(*ws["proxy"].address, timeout=5.0) as client:
        client.request("GET", "/plain")
        response = client.read_response()
    assert response.status == 200 and response.json()["backend"] == "http"


# -- server-sent events ---------------------------------------------------------------


@pytest.mark.parametrize(
    "read_timeout, accept",
    [
        # The brief's case: the whole stream (2.5 s) outlives upstream_read_timeout.
        ("1s", "text/event-stream"),
        # Stricter: every 500 ms gap outlives the read timeout, and the client
        # does not say it wants a stream (the backend's Content-Type does).
        ("300ms", None),
    ],
    ids=["accept-header-1s", "content-type-300ms"],
)
def test_sse_events_arrive_as_they_are_emitted(stack, read_timeout: str, accept: str) -> None:
    origin = SSEOrigin(count=6, gap=0.5)
    backend = stack.backend(origin, name="sse")
    proxy = stack.proxy(backend, upstream_read_timeout=read_timeout, **SERVER)
    headers = [("Accept", accept)] if accept else []
    with RawClient(*proxy.address, timeout=5.0) as client:
        started = time.monotonic()
        client.request("GET", "/events", headers=headers)
        head = client.read_head()
        assert head.status == 200, head
        assert (head.header("Content-Type") or "").startswith("text/event-stream")
        events = read_events(client, origin.count)
        assert client.read_chunk() == b"", "the stream did not end cleanly"
    assert [body.split(b"\n")[0] for _, body in events] == [b"id: %d" % i for i in range(origin.count)]
    arrivals = [at for at, _ in events]
    assert origin.finished, "the backend did not finish its stream"
    assert arrivals[0] < origin.finished[0] - 2.0, "the first event was held until the stream ended"
    assert arrivals[0] - started < 0.3, arrivals[0] - started
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    assert all(0.3 <= gap <= 0.8 for gap in gaps), f"events were buffered: gaps {gaps}"
    assert arrivals[-1] - arrivals[0] >= 2.0
