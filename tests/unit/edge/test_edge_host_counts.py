"""Tests for :mod:`speedproxy.edge.host_counts`: requests in flight summed over workers."""

from __future__ import annotations

from pathlib import Path

from speedproxy.edge import host_state, host_table
from speedproxy.edge.host_counts import HostConnectionCounts
from speedproxy.edge.host_table import EdgeTable


def test_connection_counts_sum_every_registered_worker(tmp_path: Path) -> None:
    path = str(tmp_path / "edge")
    one = HostConnectionCounts(EdgeTable(path), 0)
    two = HostConnectionCounts(EdgeTable(path), 1)
    assert one.acquire(b"c", 3) == (True, 0)
    assert two.acquire(b"c", 3) == (True, 1)
    assert one.acquire(b"c", 3) == (True, 2)
    assert two.acquire(b"c", 3) == (False, 3)
    assert one.acquire(b"other", 3)[0]
    one.release(b"c")
    assert two.in_flight(b"c") == 2
    assert two.acquire(b"c", 3) == (True, 2)


def test_a_restarted_worker_clears_its_own_counts(tmp_path: Path) -> None:
    path = str(tmp_path / "edge")
    old = HostConnectionCounts(EdgeTable(path), 1)
    other = HostConnectionCounts(EdgeTable(path), 0)
    for _ in range(5):
        old.acquire(b"c", 100)
    other.acquire(b"c", 100)
    assert other.in_flight(b"c") == 6
    HostConnectionCounts(EdgeTable(path), 1)  # slot 1 respawned
    assert other.in_flight(b"c") == 1


def test_release_without_acquire_never_goes_negative() -> None:
    counts = HostConnectionCounts(EdgeTable(None), 0)
    counts.release(b"c")
    assert counts.in_flight(b"c") == 0


def test_a_worker_slot_past_the_tables_counts_alone() -> None:
    edge = host_state._HostEdge(EdgeTable(None), host_table.CONN_TABLES + 5)
    counts = edge.counts
    assert counts.acquire(b"c", 1) == (True, 0)
    assert counts.acquire(b"c", 1) == (False, 1)
    assert edge.counts is counts
