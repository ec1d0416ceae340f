"""Python cost of one proxied request, without sockets or a reactor loop.

Drives ClientConnection -> Exchange -> UpstreamConnection with in-memory
transports (twisted.internet.testing), reusing one pooled upstream
connection, and prints microseconds per request.  wrk on a shared VM is
noisy; this is deterministic enough to compare two versions of the data
path side by side (run it with PYTHONPATH pointing at each checkout).

    python3 bench/inmemory.py [--requests 20000] [--size 1024]
"""

from __future__ import annotations

import argparse
import gc
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--cache-hit", action="store_true", help="measure a memory cache hit instead")
    parser.add_argument(
        "--access-log", default="off", help="off, - (twistd's log, batched) or a file path (e.g. /dev/null)"
    )
    parser.add_argument("--cached-route", action="store_true", help="cache on, but every response a miss (no-store)")
    args = parser.parse_args()

    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from speedproxy.config import parse_config
    from speedproxy.proxy.core import ProxyCore
    from speedproxy.proxy.server import ProxyServerFactory

    cache = ", cache: {enabled: true}" if args.cache_hit or args.cached_route else ""
    config = parse_config(
        "server: {access_log: 'off'}\n"
        "backends: {default: [{id: b1, host: 127.0.0.1, port: 8081}]}\n"
        "routing: {default: {path: /, upstream: default, load_balancer: round_robin%s}}\n" % cache
    )
    reactor = MemoryReactorClock()
    from speedproxy.accesslog import open_access_log

    core = ProxyCore(reactor, config, open_access_log(args.access_log))
    factory = ProxyServerFactory(core)
    client = factory.buildProtocol(None)
    client_transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    client.makeConnection(client_transport)

    request = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
    body = b"x" * args.size
    response = (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 12:00:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n"
        b"Last-Modified: Mon, 23 Nov 2026 11:00:00 GMT\r\nConnection: keep-alive\r\n"
        b'ETag: "abc-400"\r\nAccept-Ranges: bytes\r\n%s\r\n'
        % (len(body), b"Cache-Control: max-age=86400\r\n" if args.cache_hit else b"Cache-Control: no-store\r\n" if args.cached_route else b"")
    ) + body

    client.dataReceived(request)
    host, port, connector = reactor.tcpClients[-1][:3]
    upstream = connector.buildProtocol(None)
    upstream_transport = StringTransport()
    upstream.makeConnection(upstream_transport)
    upstream.dataReceived(response)
    assert client_transport.value().endswith(body), client_transport.value()[:200]

    # The worker's sweep flushes the access log's kept records (formatting
    # their lines) every 0.25 s; here at the end of each measured run, so
    # the formatting is part of the figure.
    flush = core.access_log.flush if core.access_log is not None else (lambda: None)

    def cycle(count: int) -> float:
        client_transport.clear()
        upstream_transport.clear()
        started = time.perf_counter()
        for _ in range(count):
            client.dataReceived(request)
            upstream.dataReceived(response)
            client_transport.clear()
            upstream_transport.clear()
        flush()
        return (time.perf_counter() - started) / count * 1e6

    def hits(count: int) -> float:
        client_transport.clear()
        started = time.perf_counter()
        for _ in range(count):
            client.dataReceived(request)
            client_transport.clear()
        flush()
        return (time.perf_counter() - started) / count * 1e6

    if args.cache_hit:
        client.dataReceived(request)
        assert b"Cache-Status: speedproxy; hit" in client_transport.value(), client_transport.value()[:400]
        cycle = hits  # noqa: F811

    cycle(2000)
    gc.collect()
    results = sorted(cycle(args.requests) for _ in range(args.repeat))
    assert len(reactor.tcpClients) == 1, "the upstream connection was not reused"
    # The minimum is the least disturbed run on a shared machine.
    print("%.2f us/request min, %.2f median (%d x %d, %d-byte body)" % (
        results[0], results[len(results) // 2], args.repeat, args.requests, args.size))


if __name__ == "__main__":
    main()
