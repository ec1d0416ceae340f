"""Per-request cost of ``rate_limit``, ``connection_limit`` and ``sessions`` (issue 14).

Like ``bench/inmemory.py``: one proxied request driven through
ClientConnection -> Exchange -> UpstreamConnection with in-memory
transports, but with the core attached to a real stats segment file, so the
edge state is the shared-memory file a worker uses (its locks and
all).  Prints CPU microseconds (process time, steadier than wall time on a shared machine) per request for a bare route and for the same
route with each key, side by side in one run, and the cost of the store's
own calls.

    python3 bench/edge_limits.py [--requests 20000] [--repeat 9]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from typing import Callable, Dict, List


def proxy_cycle(route_keys: str, requests: int, repeat: int, directory: str, session: bool = False) -> float:
    """Minimum µs per proxied 1 KiB request on a route with ``route_keys``."""
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from speedproxy.config import parse_config
    from speedproxy.edge.host_table import remove_edge_state
    from speedproxy.proxy.core import ProxyCore
    from speedproxy.proxy.server import ProxyServerFactory
    from speedproxy.stats.segment import StatsSegment, layout_for
    from speedproxy.stats.shared import SharedView

    config = parse_config(
        "server: {access_log: 'off', workers: 2}\n"
        "backends: {default: [{id: b1, host: 127.0.0.1, port: 8081}]}\n"
        "routing: {default: {path: /, upstream: default, load_balancer: round_robin%s}}\n" % route_keys
    )
    fd, path = tempfile.mkstemp(prefix="bench-stats-", dir=directory)
    os.close(fd)
    segment = StatsSegment.create(path, layout_for(4, 1, 1))
    reactor = MemoryReactorClock()
    core = ProxyCore(reactor, config, None, shared=SharedView(segment, 0))
    headers = b""
    if session:  # a live session in the workers' file, presented as a cookie
        from speedproxy.edge.host_state import host_edge_for

        token = host_edge_for(core).state.open_session("127.0.0.1", 3600.0, 3, "default").id  # the route's realm
        headers = b"Cookie: spx_session=%s\r\n" % token.encode()
    client = ProxyServerFactory(core).buildProtocol(None)
    client_transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    client.makeConnection(client_transport)
    request = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n%s\r\n" % headers
    body = b"x" * 1024
    response = (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 12:00:00 GMT\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n"
        b'Connection: keep-alive\r\nETag: "abc-400"\r\nAccept-Ranges: bytes\r\n\r\n' % len(body)
    ) + body
    client.dataReceived(request)
    assert reactor.tcpClients, client_transport.value()[:400]
    upstream = reactor.tcpClients[-1][2].buildProtocol(None)
    upstream_transport = StringTransport()
    upstream.makeConnection(upstream_transport)
    upstream.dataReceived(response)
    assert client_transport.value().endswith(body), client_transport.value()[:300]

    def cycle(count: int) -> float:
        client_transport.clear()
        started = time.process_time()
        for _ in range(count):
            client.dataReceived(request)
            upstream.dataReceived(response)
            client_transport.clear()
            upstream_transport.clear()
        return (time.process_time() - started) / count * 1e6

    cycle(2000)
    gc.collect()
    results = sorted(cycle(requests) for _ in range(repeat))
    assert len(reactor.tcpClients) == 1, "the upstream connection was not reused"
    os.unlink(path)
    remove_edge_state(path + ".edge")  # (and its semaphores)
    return results[0]


def store_calls(requests: int, repeat: int, directory: str) -> Dict[str, float]:
    """Minimum µs of the store's calls alone, on a file (locks) and private."""
    from speedproxy.edge.host_counts import HostConnectionCounts
    from speedproxy.edge.host_state import HostEdgeState
    from speedproxy.edge.host_table import EdgeTable, remove_edge_state

    path = os.path.join(directory, "bench.edge")
    shared = HostEdgeState(EdgeTable(path))
    private = HostEdgeState(EdgeTable(None))
    counts = HostConnectionCounts(EdgeTable(path), 0)
    HostConnectionCounts(EdgeTable(path), 1)  # a second worker's table is summed too
    session = shared.open_session("127.0.0.1", 3600.0, 3)

    def timed(call: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(repeat):
            started = time.process_time()
            for _ in range(requests):
                call()
            best = min(best, (time.process_time() - started) / requests * 1e6)
        return best

    def acquire_release() -> None:
        counts.acquire(b"cl\0default\0127.0.0.1", 1 << 30)
        counts.release(b"cl\0default\0127.0.0.1")

    shared.take(b"rl\0default\0ip\0127.0.0.1", 1e9, 1e9)  # (which locks: decided at the first take)
    figures = {
        "take (file, %s locks)" % ("semaphore" if shared.table.bucket_locks else "fcntl"):
            timed(lambda: shared.take(b"rl\0default\0ip\0127.0.0.1", 1e9, 1e9)),
        "take (private, no locks)": timed(lambda: private.take(b"rl\0default\0ip\0127.0.0.1", 1e9, 1e9)),
        "check_session (file)": timed(lambda: shared.check_session(session.id)),
        "connection acquire+release (file, 2 workers)": timed(acquire_release),
    }
    remove_edge_state(path)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    directory = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        rows: List[tuple] = []
        bare = proxy_cycle("", args.requests, args.repeat, scratch)
        rows.append(("bare route", bare))
        for name, keys, session in (
            ("a no-op edge filter (allow: 0/0)", ", allow: ['0.0.0.0/0']", False),
            ("rate_limit", ", rate_limit: {requests: 1000000000, per: 1s}", False),
            ("connection_limit", ", connection_limit: {per_client: 1000000}", False),
            ("sessions (cookie)", ", sessions: {ttl: 1h}", True),
            ("rate_limit + connection_limit", ", rate_limit: {requests: 1000000000, per: 1s}, "
             "connection_limit: {per_client: 1000000}", False),
        ):
            rows.append((name, proxy_cycle(keys, args.requests, args.repeat, scratch, session)))
        print("proxied 1 KiB request, in memory, edge state in %s (min of %d x %d):" % (scratch, args.repeat, args.requests))
        for name, value in rows:
            print("  %-34s %7.2f us  (+%.2f us, %.2fx)" % (name, value, value - bare, value / bare))
        print("store calls alone:")
        for name, value in store_calls(args.requests, args.repeat, scratch).items():
            print("  %-44s %6.2f us" % (name, value))


if __name__ == "__main__":
    main()
