"""Cost of response compression per request, without sockets or a reactor loop.

Drives ClientConnection -> Exchange (-> UpstreamConnection) with in-memory
transports, as ``bench/inmemory.py`` does, for a 100 KiB HLS playlist, and
prints CPU microseconds per request (process time: steadier than wall
clock on a shared machine) for:

- memory cache hits on a route without compression (the reference);
- hits on a route with ``compression`` for a gzip, a brotli and an
  identity client: answered from the kept compressed copy, so the body is
  not compressed again;
- what compressing that body on every hit would cost (gzip level 5, brotli
  quality 4, one-shot): what the copies save;
- proxied (uncached) requests of a 1 KiB image on a route with and without
  ``compression`` (the filter's cost on responses it does not compress).

    python3 bench/compression.py [--requests 5000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Callable, List, Tuple


def playlist(size: int) -> bytes:
    lines = [b"#EXTM3U", b"#EXT-X-VERSION:3", b"#EXT-X-TARGETDURATION:4"]
    index = 0
    while sum(len(line) + 1 for line in lines) < size:
        lines += [b"#EXTINF:4.000,", b"segment-%06d.ts?token=abcdef0123456789" % index]
        index += 1
    return b"\n".join(lines + [b"#EXT-X-ENDLIST"]) + b"\n"


def setup(route_extra: str, response: bytes) -> Tuple[object, object, object, object]:
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from speedproxy.accesslog import open_access_log
    from speedproxy.config import parse_config
    from speedproxy.proxy.core import ProxyCore
    from speedproxy.proxy.server import ProxyServerFactory

    config = parse_config(
        "server: {access_log: 'off'}\n"
        "backends: {default: [{id: b1, host: 127.0.0.1, port: 8081}]}\n"
        "routing: {default: {path: /, upstream: default, load_balancer: round_robin%s}}\n" % route_extra
    )
    reactor = MemoryReactorClock()
    core = ProxyCore(reactor, config, open_access_log("off"))
    client = ProxyServerFactory(core).buildProtocol(None)
    client_transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    client.makeConnection(client_transport)
    client.dataReceived(b"GET /live.m3u8 HTTP/1.1\r\nHost: h\r\n\r\n")
    connector = reactor.tcpClients[-1][2]
    upstream = connector.buildProtocol(None)
    upstream_transport = StringTransport()
    upstream.makeConnection(upstream_transport)
    upstream.dataReceived(response)
    return client, client_transport, upstream, upstream_transport


def measure(run: Callable[[int], float], requests: int, repeat: int) -> Tuple[float, float]:
    run(min(requests, 500))
    gc.collect()
    results = sorted(run(requests) for _ in range(repeat))
    return results[0], results[len(results) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--size", type=int, default=100 * 1024)
    args = parser.parse_args()

    from speedproxy.edge.compression_codecs import BR, GZIP, compress

    body = playlist(args.size)
    cached = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\nETag: \"v1\"\r\n"
        b"Cache-Control: max-age=86400\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    rows: List[Tuple[str, Tuple[float, float]]] = []

    def hits(route_extra: str, accept: bytes) -> Callable[[int], float]:
        client, transport, _, _ = setup(route_extra, cached)
        request = b"GET /live.m3u8 HTTP/1.1\r\nHost: h\r\n%s\r\n" % (b"Accept-Encoding: " + accept + b"\r\n" if accept else b"")
        client.dataReceived(request)  # makes the copy, if any
        assert b"Cache-Status: speedproxy; hit" in transport.value()

        def run(count: int) -> float:
            transport.clear()
            started = time.process_time()
            for _ in range(count):
                client.dataReceived(request)
                transport.clear()
            return (time.process_time() - started) / count * 1e6

        return run

    cache = ", cache: {enabled: true}"
    compression = ", compression: {}"
    rows.append(("hit, route without compression (identity)", measure(hits(cache, b""), args.requests, args.repeat)))
    rows.append(("hit, compression on, client gzip (kept copy)", measure(hits(cache + compression, b"gzip"), args.requests, args.repeat)))
    rows.append(("hit, compression on, client br (kept copy)", measure(hits(cache + compression, b"gzip, deflate, br"), args.requests, args.repeat)))
    rows.append(("hit, compression on, client identity", measure(hits(cache + compression, b""), args.requests, args.repeat)))

    def one_shot(coding: bytes) -> Callable[[int], float]:
        def run(count: int) -> float:
            started = time.process_time()
            for _ in range(count):
                compress(coding, body, 5, 4)
            return (time.process_time() - started) / count * 1e6

        return run

    slow = max(1, args.requests // 20)
    rows.append(("compressing the body once, gzip level 5", measure(one_shot(GZIP), slow, args.repeat)))
    rows.append(("compressing the body once, brotli quality 4", measure(one_shot(BR), slow, args.repeat)))

    image = b"\x89PNG" * 256
    proxied = (
        b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(image)
    ) + image

    def relayed(route_extra: str) -> Callable[[int], float]:
        client, transport, upstream, upstream_transport = setup(route_extra, proxied)
        request = b"GET /poster.png HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip, br\r\n\r\n"

        def run(count: int) -> float:
            transport.clear()
            upstream_transport.clear()
            started = time.process_time()
            for _ in range(count):
                client.dataReceived(request)
                upstream.dataReceived(proxied)
                transport.clear()
                upstream_transport.clear()
            return (time.process_time() - started) / count * 1e6

        return run

    rows.append(("proxied 1 KiB image, route without compression", measure(relayed(""), args.requests, args.repeat)))
    rows.append(("proxied 1 KiB image, compression on (not compressed)", measure(relayed(compression), args.requests, args.repeat)))

    print("%d-byte playlist; microseconds per request, min / median of %d runs" % (len(body), args.repeat))
    for name, (low, median) in rows:
        print("  %-56s %9.2f  %9.2f" % (name, low, median))


if __name__ == "__main__":
    main()
