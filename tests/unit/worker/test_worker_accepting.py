"""A worker over its share of connections leaves new ones to the others, briefly."""

from __future__ import annotations

import os
from typing import List

from twisted.internet.testing import MemoryReactorClock

from speedproxy.worker.accepting import AcceptBalancer


class Port:
    """Stands in for twisted.internet.tcp.Port: counts accepts and read state.

    Its file descriptor is a pipe: readable (a byte in it) while a
    connection is pending.
    """

    def __init__(self) -> None:
        self._read_end, self._write_end = os.pipe()
        self.pending(True)
        self.numberAccepts = 100
        self.reading = True
        self.connected = True
        self.disconnecting = False
        self.accept_limits: List[int] = []

    def fileno(self) -> int:
        return self._read_end

    def pending(self, waiting: bool) -> None:
        """Make a connection wait (readable), or let another worker take it."""
        os.set_blocking(self._read_end, False)
        try:
            while os.read(self._read_end, 100):
                pass
        except BlockingIOError:
            pass
        if waiting:
            os.write(self._write_end, b"x")

    def close(self) -> None:
        os.close(self._read_end)
        os.close(self._write_end)

    def doRead(self) -> None:
        self.accept_limits.append(self.numberAccepts)

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


def make(mine: int, total: int, workers: int = 2):
    clock = MemoryReactorClock()
    port = Port()
    counts = {"mine": mine, "total": total, "workers": workers}
    balancer = AcceptBalancer(
        port, clock, lambda: counts["mine"], lambda: counts["total"], lambda: counts["workers"]
    )
    balancer.install()
    return balancer, port, clock, counts


def test_install_routes_read_events_through_the_balancer() -> None:
    balancer, port, _, _ = make(0, 0)
    assert port.doRead == balancer.doRead
    port.doRead()
    assert port.accept_limits == [4]  # an empty proxy: take a few at a time, share the burst


def test_a_single_worker_accepts_as_twisted_would() -> None:
    balancer, port, _, _ = make(mine=500, total=500, workers=1)
    balancer.doRead()
    assert port.accept_limits == [100]


def test_under_its_share_a_worker_accepts_up_to_the_share() -> None:
    balancer, port, _, _ = make(mine=10, total=40)  # share 20, +1 slack
    balancer.doRead()
    assert port.accept_limits == [11]
    assert port.reading


def test_over_its_share_a_worker_pauses_then_watches_again() -> None:
    balancer, port, clock, _ = make(mine=30, total=40)
    balancer.doRead()
    assert port.accept_limits == []
    assert not port.reading
    assert balancer.deferred == 1
    clock.advance(balancer.pause)
    assert port.reading


def test_a_connection_nobody_else_takes_is_accepted_after_max_defer() -> None:
    balancer, port, clock, _ = make(mine=30, total=40)
    waited = 0.0
    while not port.accept_limits:
        balancer.doRead()
        clock.advance(balancer.pause * 7)  # late resumes still count as one wait
        waited += balancer.pause * 7
        assert waited <= balancer.max_defer + 14 * balancer.pause
    assert waited >= balancer.max_defer - balancer.pause
    # The others are not taking connections: accept everything for a while.
    assert port.accept_limits == [100]
    balancer.doRead()
    assert port.accept_limits == [100, 100]
    clock.advance(balancer.bypass)
    port.accept_limits.clear()
    balancer.doRead()
    assert port.accept_limits == []  # balancing again


def test_a_connection_another_worker_took_ends_the_wait() -> None:
    balancer, port, clock, _ = make(mine=30, total=40)
    balancer.doRead()
    port.pending(False)  # taken by the other worker
    clock.advance(balancer.pause)
    assert port.reading
    # Much later, a new connection: a new wait, not the old one's leftover.
    clock.advance(10.0)
    port.pending(True)
    balancer.doRead()
    assert port.accept_limits == []
    assert balancer.deferred == 2


def test_the_balance_follows_the_counts() -> None:
    balancer, port, clock, counts = make(mine=30, total=40)
    balancer.doRead()
    assert port.accept_limits == []
    clock.advance(balancer.pause)
    counts.update(mine=12, total=40)  # connections closed meanwhile
    balancer.doRead()
    assert port.accept_limits == [9]


def test_a_closed_port_is_not_watched_again() -> None:
    balancer, port, clock, _ = make(mine=30, total=40)
    balancer.doRead()
    port.connected = False
    clock.advance(balancer.pause)
    assert not port.reading


def test_stop_cancels_the_pending_resume() -> None:
    balancer, port, clock, _ = make(mine=30, total=40)
    balancer.doRead()
    balancer.stop()
    assert not clock.getDelayedCalls()
    clock.advance(1.0)
    assert not port.reading
