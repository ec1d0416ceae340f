"""Token buckets and the connection throttle, on a fake clock and connection."""

from __future__ import annotations

from typing import Any, List

from twisted.internet.task import Clock

from speedproxy.hls.bandwidth import (
    HIGH_WATER,
    ConnectionThrottle,
    TokenBucket,
    burst_for,
    chunk_for,
    throttle_for,
    worker_share,
)


class Transport:
    def __init__(self) -> None:
        self.disconnected = False
        self.lost = 0

    def loseConnection(self) -> None:
        self.lost += 1

    def getPeer(self) -> str:
        return "peer"


class Upstream:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1


class Exchange:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.upstream = Upstream()


class Server:
    write_timeout = 30.0


class Core:
    server = Server()


class Client:
    """What the throttle uses of a ClientConnection."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.core = Core()
        self.transport = Transport()
        self.sent: List[tuple] = []
        self.plain = True
        self._write_paused = False
        self.deadline = 0.0
        self.exchange: Any = None
        self.resumes = 0

    def write(self, data: Any) -> None:
        self.sent.append((self.clock.seconds(), bytes(data)))

    def write_sequence(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def resumeProducing(self) -> None:
        self.resumes += 1

    def total(self) -> int:
        return sum(len(data) for _, data in self.sent)


def run(clock: Clock, seconds: float, step: float = 0.001) -> None:
    for _ in range(int(seconds / step)):
        clock.advance(step)


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(1000, 100, 0.0)
    assert bucket.available(0.0) == 100
    bucket.take(100)
    assert bucket.available(0.05) == 50
    assert bucket.wait(80, 0.05) == 0.03
    assert bucket.available(10.0) == 100  # never more than the burst
    assert bucket.wait(500, 10.0) == 0.0  # asks are capped at the burst


def test_sizes_and_shares() -> None:
    assert burst_for(1_000_000) == 50_000 and burst_for(1000) == 4096
    assert chunk_for(1_000_000) == 20_000 and chunk_for(10) == 1024 and chunk_for(1e9) == 65536
    assert worker_share(1000, 4) == 250 and worker_share(1000, 0) == 1000


def test_a_response_is_paced_at_the_rate_after_its_allowance() -> None:
    clock = Clock()
    client = Client(clock)
    throttle = ConnectionThrottle(client, clock, rate=100_000, after=10_000)
    throttle.configure(100_000, 10_000, None)
    assert client.plain is False and client.hls_throttle is throttle  # no sendfile, no splice
    client.write(b"x" * 300_000)
    first = client.total()
    assert first == 10_000 + burst_for(100_000)  # the allowance and the bucket's depth at once
    run(clock, 1.0)
    assert abs(client.total() - first - 100_000) <= chunk_for(100_000)
    run(clock, 2.0)
    assert client.total() == 300_000
    assert len(clock.getDelayedCalls()) == 0  # nothing left to do: no timer
    # Each write waited for a chunk: no tiny writes, no busy loop.
    assert all(len(data) >= chunk_for(100_000) for _, data in client.sent[1:-1])


def test_the_allowance_is_per_response_and_the_order_is_kept() -> None:
    clock = Clock()
    client = Client(clock)
    throttle = throttle_for(Exchange(client), clock, 10_000, 5000, None)
    client.write(b"a" * 20_000)
    throttle_for(Exchange(client), clock, 10_000, 5000, None)  # the next request on the connection
    client.write(b"b" * 20_000)
    run(clock, 10.0, 0.01)
    assert b"".join(data for _, data in client.sent) == b"a" * 20_000 + b"b" * 20_000
    # 40 000 bytes at 10 000/s, minus the two allowances and the first burst.
    last = client.sent[-1][0]
    assert 2.4 <= last <= 3.2, last


def test_the_route_bucket_limits_every_connection_together() -> None:
    clock = Clock()
    route = TokenBucket(50_000, burst_for(50_000), 0.0)
    clients = [Client(clock) for _ in range(2)]
    for client in clients:
        throttle_for(Exchange(client), clock, 0, 0, route)
        client.write(b"z" * 100_000)
    run(clock, 2.0)
    total = sum(client.total() for client in clients)
    assert abs(total - (100_000 + burst_for(50_000))) <= 2 * chunk_for(50_000)
    assert all(client.total() > 30_000 for client in clients)  # both got some


def test_over_the_high_water_mark_the_backend_read_pauses_and_resumes_when_drained() -> None:
    clock = Clock()
    client = Client(clock)
    exchange = Exchange(client)
    client.exchange = exchange
    throttle_for(exchange, clock, 1_000_000, 0, None)
    client.write(b"y" * (HIGH_WATER + 100_000))
    assert exchange.upstream.paused == 1
    run(clock, 1.0)
    assert exchange.upstream.resumed == 1 and client.total() == HIGH_WATER + 100_000


def test_a_full_socket_stops_the_pacing_until_the_transport_resumes_it() -> None:
    clock = Clock()
    client = Client(clock)
    throttle_for(Exchange(client), clock, 100_000, 0, None)
    client._write_paused = True
    client.write(b"w" * 50_000)
    run(clock, 1.0)
    assert client.total() == 0
    client._write_paused = False
    client.resumeProducing()  # what the transport calls: the throttle's wrapper
    assert client.resumes == 1 and client.total() > 0
    run(clock, 1.0)
    assert client.total() == 50_000


def test_a_close_waits_for_the_queue_and_a_lost_connection_drops_it() -> None:
    clock = Clock()
    client = Client(clock)
    real = client.transport
    throttle = throttle_for(Exchange(client), clock, 10_000, 0, None)
    client.write(b"q" * 30_000)
    client.transport.loseConnection()
    assert real.lost == 0 and client.transport.getPeer() == "peer"
    run(clock, 5.0, 0.01)
    assert real.lost == 1 and client.total() == 30_000
    client.write(b"r" * 30_000)
    real.disconnected = True
    run(clock, 1.0, 0.01)
    assert throttle.queued == 0 and not clock.getDelayedCalls()


def test_without_limits_a_throttled_connection_writes_at_once() -> None:
    clock = Clock()
    client = Client(clock)
    throttle = throttle_for(Exchange(client), clock, 1000, 0, None)
    throttle.configure(0, 0, None)
    client.write(b"u" * 100_000)
    assert client.total() == 100_000 and not clock.getDelayedCalls()


# -- through the data path: the throttle leaves with the response it paced --------------

_ROUTES = """\
routing:
  hls:
    path: /hls/
    upstream: default
    cache: {enabled: true}
    hls: {enabled: true, prefetch_depth: 0, rate_limit: 10000, rate_limit_after: 0}
  plain: {path: /, upstream: default}
"""


def test_a_later_request_on_the_connection_to_another_route_is_not_paced() -> None:
    from speedproxy.testing import IN_MEMORY_CONFIG, InMemoryProxy

    base = IN_MEMORY_CONFIG[: IN_MEMORY_CONFIG.index("routing:")]
    proxy = InMemoryProxy(base + _ROUTES)
    client = proxy.client("192.0.2.1")
    client.send(b"GET /hls/a.ts HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok")
    proxy.reactor.advance(1)
    assert client.take().endswith(b"\r\n\r\nok")
    assert getattr(client.protocol, "hls_throttle", None) is None  # taken off once its response was sent
    body = b"x" * 200_000
    client.send(b"GET /api/big HTTP/1.1\r\nHost: h\r\n\r\n")
    if proxy.pending_connects():
        backend = proxy.accept()
    backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert client.take().endswith(body)  # all at once, not at 10 kB/s
