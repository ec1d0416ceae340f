"""Python cost of one proxied request over HTTP/2, without sockets: µs per request.

The HTTP/2 counterpart of bench/inmemory.py: an h2c client connection in
memory (twisted.internet.testing) sends ``--streams`` requests at once, as
h2load does (the same fields, HPACK-indexed after the first; a large
client window, so the proxy never waits for WINDOW_UPDATE), each stream
goes through an Exchange to one of the pooled in-memory HTTP/1.1 backend
connections, every backend answers 1 KiB, and the reactor turn ends (the
answers leave).  ``--http1`` measures the same cycle with HTTP/1.1
clients instead (``--streams`` keep-alive connections, one request each
per turn), so both figures come from one process and one set-up.

    python3 bench/h2_inmemory.py [--requests 20000] [--streams 10] [--http1]

For a deterministic figure, count instructions of two run lengths under
callgrind (``--repeat 1 --warmup 0``) and take the difference::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python3 bench/h2_inmemory.py --repeat 1 --requests 1000
"""

from __future__ import annotations

import argparse
import gc
import os
import struct
import sys
import time
from typing import Callable, List, Tuple

# bench/h2.py would shadow the h2 library.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != _HERE]

REQUEST_FIELDS = [
    (b":method", b"GET"),
    (b":path", b"/1k"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:8080"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]


def response_bytes(size: int) -> Tuple[bytes, bytes]:
    body = b"x" * size
    head = (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 12:00:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n"
        b"Last-Modified: Mon, 23 Nov 2026 11:00:00 GMT\r\nConnection: keep-alive\r\n"
        b'ETag: "abc-400"\r\nAccept-Ranges: bytes\r\n\r\n' % len(body)
    )
    return head + body, body


def setup(streams: int, size: int, http1: bool) -> Callable[[int], None]:
    """Build the proxy, its clients and backends; return ``turns(n)``."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.settings import SettingCodes
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from speedproxy.accesslog import open_access_log
    from speedproxy.config import parse_config
    from speedproxy.proxy.core import ProxyCore
    from speedproxy.proxy.server import ProxyServerFactory

    config = parse_config(
        "server: {access_log: 'off'}\n"
        "backends: {default: [{id: b1, host: 127.0.0.1, port: 8081}]}\n"
        "routing: {default: {path: /, upstream: default, load_balancer: round_robin}}\n"
    )
    reactor = MemoryReactorClock()
    core = ProxyCore(reactor, config, open_access_log("off"))
    factory = ProxyServerFactory(core)
    response, body = response_bytes(size)
    backends: List[Tuple[object, StringTransport]] = []

    def connect_backends() -> None:
        while len(backends) < len(reactor.tcpClients):
            connector = reactor.tcpClients[len(backends)][2]
            protocol = connector.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            backends.append((protocol, transport))

    def answer() -> int:
        connect_backends()
        answered = 0
        for protocol, transport in backends:
            if transport.value():
                transport.clear()
                protocol.dataReceived(response)  # type: ignore[attr-defined]
                answered += 1
        reactor.advance(0)  # the end of the reactor turn: queued frames leave
        return answered

    if http1:
        request = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"
        clients = []
        for index in range(streams):
            client = factory.buildProtocol(None)
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000 + index))
            client.makeConnection(transport)
            clients.append((client, transport))

        def turns(count: int) -> None:
            for _ in range(count):
                for client, _transport in clients:
                    client.dataReceived(request)
                answer()
                for _client, transport in clients:
                    transport.clear()

        turns(2)
        assert all(transport.value() == b"" for _, transport in clients)
        client, transport = clients[0]
        client.dataReceived(request)
        answer()
        assert transport.value().endswith(body), transport.value()[:300]
        return turns

    # HTTP/2: one connection, `streams` requests per turn, h2load's settings.
    peer = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    peer.local_settings.update({SettingCodes.INITIAL_WINDOW_SIZE: 2**30 - 1, SettingCodes.ENABLE_PUSH: 0})
    peer.initiate_connection()
    peer.increment_flow_control_window(2**30 - 1 - 65535)
    opening = peer.data_to_send()
    encoder = peer.encoder
    first_block = encoder.encode(REQUEST_FIELDS)  # the fields enter the dynamic table...
    block = encoder.encode(REQUEST_FIELDS)  # ...and every later block is indices
    frame_head = struct.Struct(">HBBBL")

    def headers_frame(stream_id: int, data: bytes) -> bytes:
        return frame_head.pack(len(data) >> 8, len(data) & 0xFF, 0x1, 0x5, stream_id) + data

    client = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    client.makeConnection(transport)
    settings_ack = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
    client.dataReceived(opening)
    transport.protocol.dataReceived(settings_ack + headers_frame(1, first_block))  # the H2ClientConnection now
    answer()
    assert transport.value().endswith(body), transport.value()[-300:]
    state = {"next": 3, "credit": 0}
    window_update = struct.Struct(">HBBBLL")

    def turns(count: int) -> None:
        next_id = state["next"]
        for _ in range(count):
            data = b"".join(headers_frame(next_id + 2 * index, block) for index in range(streams))
            next_id += 2 * streams
            state["credit"] += streams * size
            if state["credit"] > 2**29:  # give the proxy its connection window back, as h2load does
                data += window_update.pack(0, 4, 0x8, 0, 0, state["credit"])
                state["credit"] = 0
            protocol = transport.protocol
            protocol.dataReceived(data)
            answered = answer()
            if answered != streams:
                raise AssertionError("%d of %d streams reached a backend" % (answered, streams))
            transport.clear()
        state["next"] = next_id

    turns(2)
    return turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams (HTTP/1.1: connections)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--http1", action="store_true", help="HTTP/1.1 clients instead of one HTTP/2 connection")
    args = parser.parse_args()
    turns = setup(args.streams, args.size, args.http1)
    count = max(1, args.requests // args.streams)
    if args.warmup:
        turns(max(1, args.warmup // args.streams))
    gc.collect()
    results = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        turns(count)
        results.append((time.perf_counter() - started) / (count * args.streams) * 1e6)
    results.sort()
    print("%s: %.2f us/request min, %.2f median (%d x %d, %d streams, %d-byte body)" % (
        "HTTP/1.1" if args.http1 else "HTTP/2", results[0], results[len(results) // 2],
        args.repeat, count * args.streams, args.streams, args.size))


if __name__ == "__main__":
    main()
