"""Bandwidth limits of HLS routes: token buckets pacing what clients are sent.

``hls.rate_limit`` (bytes/s per client connection, after the first
``hls.rate_limit_after`` bytes of each response, as nginx's ``limit_rate``
and ``limit_rate_after``) and ``hls.max_bandwidth`` (bytes/s for the whole
route) are applied by a :class:`ConnectionThrottle` that the HLS filter puts
on a client connection at its first request on such a route:

- the connection's writers go through it: bytes the buckets allow now are
  written at once; the rest wait in its queue and a timer (the injected
  reactor's ``callLater``, at the moment the buckets will hold the next
  chunk) writes them: no polling, no busy loop;
- while more than :data:`HIGH_WATER` bytes wait, the backend read of the
  exchange is paused (the proxy's own producer pause), and resumed below
  :data:`LOW_WATER`, so a limited client never fills memory;
- the connection stops counting as a plain TCP one (no sendfile, no
  splice: those bytes would bypass the pacing); a close asked while bytes
  wait happens once they are sent.

``max_bandwidth`` is shared by the workers by splitting it: each worker's
route bucket gets ``max_bandwidth / workers``.  The workers of a host take
connections from one listening socket in turn, so load spreads evenly
enough, and the sum can never exceed the limit (a shared counter in the
stats segment would let one worker borrow the others' share, but costs a
lock-free read-modify-write per write and a way to refill it fairly; the
split needs nothing on the data path).  Routes without limits never see
any of this.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.exchange import Exchange

#: Queued bytes over which the backend read is paused, and under which it resumes.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
#: Smallest write the timer waits for (unless less is queued): few, not tiny, writes.
MIN_CHUNK = 1024
MAX_CHUNK = 64 * 1024


class TokenBucket:
    """``rate`` tokens (bytes) a second, holding at most ``burst``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = float(rate)
        self.burst = float(max(burst, 1.0))
        self.tokens = self.burst
        self.stamp = now

    def available(self, now: float) -> float:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, amount: float) -> None:
        self.tokens -= amount

    def wait(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` tokens are there (``amount`` at most the burst)."""
        missing = min(amount, self.burst) - self.available(now)
        return missing / self.rate if missing > 0 else 0.0


def burst_for(rate: float) -> float:
    """A bucket's depth: 50 ms of its rate (at least a chunk), so pacing stays close to the rate."""
    return max(rate / 20.0, MIN_CHUNK * 4)


def chunk_for(rate: float) -> int:
    """What the timer waits to have: 20 ms of the rate, within bounds."""
    return int(min(MAX_CHUNK, max(MIN_CHUNK, rate / 50.0)))


def worker_share(total: int, workers: Optional[int]) -> float:
    """A worker's share of a route's ``max_bandwidth`` (``workers``: ``server.workers``; ``None``: one per CPU)."""
    count = workers if workers is not None else (os.cpu_count() or 1)
    return total / float(max(count, 1))


class RouteBucket:
    """The ``max_bandwidth`` bucket of one route in one worker."""

    def __init__(self, rate: float, now: float) -> None:
        self.bucket = TokenBucket(rate, burst_for(rate), now)

    def set_rate(self, rate: float) -> None:
        if rate != self.bucket.rate:
            self.bucket.rate = float(rate)
            self.bucket.burst = burst_for(rate)


class _TransportShim:
    """The connection's transport, with ``loseConnection`` held until the queue is sent."""

    def __init__(self, transport: Any, throttle: "ConnectionThrottle") -> None:
        self.__dict__["_transport"] = transport
        self.__dict__["_throttle"] = throttle

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_transport"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_transport"], name, value)

    def loseConnection(self) -> None:
        throttle = self.__dict__["_throttle"]
        if throttle.queued:
            throttle.close_when_sent = True
            return
        self.__dict__["_transport"].loseConnection()


class ConnectionThrottle:
    """Paces the writes of one client connection (see the module docstring)."""

    def __init__(self, client: Any, reactor: Any, rate: int, after: int) -> None:
        self.client = client
        self.reactor = reactor
        self.rate = rate
        self.after = after
        now = reactor.seconds()
        self.bucket: Optional[TokenBucket] = TokenBucket(rate, burst_for(rate), now) if rate > 0 else None
        self.route: Optional[TokenBucket] = None
        #: Bytes of the current response still sent unlimited (``rate_limit_after``).
        self.free = 0
        #: [data, bytes of it sent unlimited] waiting, in order.
        self.queue: Deque[List[Any]] = deque()
        self.queued = 0
        self.timer: Any = None
        self.close_when_sent = False
        self._paused_upstream: Any = None
        self.transport = client.transport
        self._write = client.write
        self._write_sequence = client.write_sequence
        self._resume = client.resumeProducing
        self._plain = client.plain
        #: Take the throttle off the connection once its queue is sent.
        self.release_when_sent = False
        client.write = self.write
        client.write_sequence = self.write_sequence
        client.resumeProducing = self._resumed
        client.plain = False
        client.transport = _TransportShim(self.transport, self)
        client.hls_throttle = self

    # -- settings -----------------------------------------------------------------

    def configure(self, rate: int, after: int, route: Optional[TokenBucket]) -> None:
        """A new response on the connection: its route's settings, a fresh ``after`` allowance."""
        self.release_when_sent = False
        if rate != self.rate:
            self.rate = rate
            now = self.reactor.seconds()
            self.bucket = TokenBucket(rate, burst_for(rate), now) if rate > 0 else None
        self.after = after
        self.free = after if rate > 0 else 0
        self.route = route

    # -- writing ------------------------------------------------------------------

    def write(self, data: Any) -> None:
        size = len(data)
        if not size:
            return
        free = min(self.free, size)
        self.free -= free
        if size > MAX_CHUNK and type(data) is not memoryview:
            data = memoryview(data)  # sent in pieces: slices, not copies
        self.queue.append([data, free])
        self.queued += size
        self.pump()

    def write_sequence(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def _allowed(self, free: int, now: float) -> float:
        allowed = float("inf")
        if self.bucket is not None:
            allowed = free + self.bucket.available(now)
        if self.route is not None:
            allowed = min(allowed, self.route.available(now))
        return allowed

    def pump(self) -> None:
        """Write what the buckets allow now; wait (a timer) for the rest."""
        if self.timer is not None:
            return
        transport = self.transport
        if getattr(transport, "disconnected", False):
            self.queue.clear()
            self.queued = 0
            return
        if self.client._write_paused:
            return  # the client's socket is full: _resumed() pumps again
        now = self.reactor.seconds()
        queue = self.queue
        while queue:
            entry = queue[0]
            data, free = entry
            size = len(data)
            allowed = self._allowed(free, now)
            shared = self.route is not None
            if allowed < size or (shared and size > self._chunk):
                wanted = min(size, self._chunk)
                if allowed < wanted:
                    self._wait(wanted, free, now)
                    break
                # A shared bucket is taken a chunk at a time: the other
                # connections due now get their turn before this one's next.
                size = wanted if shared else int(allowed)
            piece = data if size == len(data) else data[:size]
            if size == len(data):
                queue.popleft()
            else:
                entry[0] = data[size:]
            used_free = min(free, size)
            entry[1] = free - used_free
            if self.bucket is not None:
                self.bucket.take(size - used_free)
            if self.route is not None:
                self.route.take(size)
            self.queued -= size
            self._write(piece)
            self._progress(now)
            if shared and queue:
                self.timer = self.reactor.callLater(0, self._tick)
                break
        self._flow()

    @property
    def _chunk(self) -> int:
        rates = [bucket.rate for bucket in (self.bucket, self.route) if bucket is not None]
        return chunk_for(min(rates)) if rates else MAX_CHUNK

    def _wait(self, wanted: int, free: int, now: float) -> None:
        delay = 0.0
        if self.bucket is not None and wanted > free:
            delay = self.bucket.wait(wanted - free, now)
        if self.route is not None:
            delay = max(delay, self.route.wait(wanted, now))
        self.timer = self.reactor.callLater(max(delay, 0.001), self._tick)

    def _tick(self) -> None:
        self.timer = None
        self.pump()

    def _progress(self, now: float) -> None:
        """Bytes left: the connection is not idle, whatever its deadline says."""
        client = self.client
        if client.deadline:
            server = client.core.server
            client.deadline = max(client.deadline, now + server.write_timeout)

    def _flow(self) -> None:
        """Pause the backend read over the high-water mark; resume under the low one; close when sent."""
        client = self.client
        exchange = client.exchange
        upstream = exchange.upstream if exchange is not None else None
        if self.queued > HIGH_WATER:
            if upstream is not None and self._paused_upstream is not upstream:
                upstream.pause_reading()
                self._paused_upstream = upstream
        elif self.queued < LOW_WATER and self._paused_upstream is not None:
            if upstream is self._paused_upstream and not client._write_paused:
                upstream.resume_reading()
            self._paused_upstream = None
        if not self.queued and self.close_when_sent:
            self.close_when_sent = False
            self.transport.loseConnection()
        elif not self.queued and self.release_when_sent and self.timer is None:
            self.release()

    def release(self) -> None:
        """Give the connection back its own writers (the limited response is sent):
        a later request on it, to any route, is not paced and may use
        sendfile and splice again."""
        self.cancel()
        self.release_when_sent = False
        client = self.client
        if getattr(client, "hls_throttle", None) is not self:
            return
        client.write = self._write
        client.write_sequence = self._write_sequence
        client.resumeProducing = self._resume
        client.plain = self._plain
        client.transport = self.transport
        client.hls_throttle = None

    def finished(self) -> None:
        """The response it paced is over: let go of the connection once its queue is sent."""
        self.release_when_sent = True
        if not self.queued and self.timer is None:
            self.release()

    def _resumed(self) -> None:
        self._resume()
        if self.queued > HIGH_WATER:
            self._flow()
        self.pump()

    def cancel(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


def throttle_for(exchange: "Exchange", reactor: Any, rate: int, after: int, route: Optional[TokenBucket]) -> ConnectionThrottle:
    """The throttle of the exchange's client connection (put on at its first use), set for this response."""
    client = exchange.client
    throttle: Optional[ConnectionThrottle] = getattr(client, "hls_throttle", None)
    if throttle is None:
        throttle = ConnectionThrottle(client, reactor, rate, after)
    throttle.configure(rate, after, route)
    return throttle
