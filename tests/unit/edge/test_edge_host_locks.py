"""Tests for :mod:`speedproxy.edge.host_locks`: the bucket sets' semaphores across real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator, List

import pytest
from twisted.logger import globalLogPublisher

from speedproxy.edge import host_locks
from speedproxy.edge.host_state import HostEdgeState
from speedproxy.edge.host_table import (
    BUCKET_SETS,
    FCNTL_LOCKS,
    LOCKS,
    LOCKS_AT,
    EdgeTable,
    key_hash,
    remove_edge_state,
)


@pytest.fixture
def edge_path(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "stats.edge")
    yield path
    remove_edge_state(path)


def _semaphores_named(name: str) -> List[str]:
    entry = "sem." + name[1:] + "-"
    return [each for each in os.listdir(host_locks.SHM_DIR) if each.startswith(entry)]


def _stripe_name(path: str) -> str:
    with open(path, "rb") as file:
        file.seek(LOCKS_AT)
        return file.read(LOCKS.size).rstrip(b"\0").decode("ascii")


def _python(code: str) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )


_TAKER = """
    import sys
    from speedproxy.edge.host_state import HostEdgeState
    from speedproxy.edge.host_table import EdgeTable
    table = EdgeTable(sys.argv[1])
    state = HostEdgeState(table, monotonic=lambda: 5.0)  # a frozen clock: no refill
    state.take(b"warm-up", 1.0, 1.0)
    print("ready", "semaphores" if table.bucket_locks else "fcntl", flush=True)
    sys.stdin.readline()
    print(sum(state.take({key!r}, 1.0, {burst}).allowed for _ in range({count})), flush=True)
"""


def _stripe_of(key: bytes) -> int:
    return (key_hash(key) % BUCKET_SETS) % host_locks.STRIPES


def _take_in_processes(
    path: str, processes: int, count: int, burst: int, key: bytes = b"shared", locks: str = "semaphores"
) -> int:
    """How many of ``count`` takes each of ``processes`` new processes were allowed in all."""
    code = _TAKER.format(count=count, burst=burst, key=key)
    takers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    try:
        for taker in takers:
            assert taker.stdout.readline().split() == ["ready", locks]
        for taker in takers:  # all at once: they race on one bucket
            taker.stdin.write("go\n")
            taker.stdin.flush()
        allowed = [int(taker.communicate(timeout=60)[0]) for taker in takers]
        assert [taker.returncode for taker in takers] == [0] * processes
        return sum(allowed)
    finally:
        for taker in takers:
            if taker.poll() is None:
                taker.kill()
                taker.wait(timeout=10)


def test_two_processes_hammering_one_bucket_get_exactly_the_burst(edge_path: str) -> None:
    EdgeTable(edge_path).close()
    assert _take_in_processes(edge_path, 2, 20000, 30000) == 30000
    assert len(_semaphores_named(_stripe_name(edge_path))) == host_locks.STRIPES


def test_a_holder_killed_while_holding_is_taken_over(edge_path: str, monkeypatch) -> None:
    monkeypatch.setattr(host_locks, "TAKE_OVER_AFTER", 0.05)
    monkeypatch.setattr(host_locks, "_taken_over", False)
    said: List[dict] = []
    globalLogPublisher.addObserver(said.append)
    try:
        state = HostEdgeState(EdgeTable(edge_path), monotonic=lambda: 5.0)
        assert state.take(b"other", 1.0, 1.0).allowed  # makes the stripe
        stripe = _stripe_of(b"shared")
        holder = _python(f"""
            import sys, time
            from speedproxy.edge.host_table import EdgeTable
            table = EdgeTable({edge_path!r})
            assert table.open_bucket_locks()[{stripe}].acquire(False)
            print("held", flush=True)
            sys.stdin.readline()
        """)
        try:
            assert holder.stdout.readline().strip() == "held"
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
        assert state.take(b"shared", 1.0, 3.0).allowed  # waits, then takes the dead holder's lock over
        assert sum(state.take(b"shared", 1.0, 3.0).allowed for _ in range(5)) == 2
        semaphore = state.table.bucket_locks[stripe]
        assert semaphore.acquire(False)  # free again, and counted once:
        assert not semaphore.acquire(False)
        semaphore.release()
    finally:
        globalLogPublisher.removeObserver(said)
    taken_over = [event for event in said if "taken over" in event.get("log_format", "")]
    assert len(taken_over) == 1 and taken_over[0]["log_namespace"] == "speedproxy.edge"
    again = next(key for key in (b"again-%d" % i for i in range(100000)) if _stripe_of(key) == stripe)
    assert _take_in_processes(edge_path, 2, 50, 60, again) == 60  # takes under that semaphore are exact again


def test_names_differ_per_state_file_and_a_gone_files_are_removed(tmp_path: Path) -> None:
    one, two, three = (str(tmp_path / f"{name}.edge") for name in ("one", "two", "three"))
    try:
        for path in (one, two):
            EdgeTable(path).open_bucket_locks()
        first = _stripe_name(one)
        assert first != _stripe_name(two)
        assert len(_semaphores_named(first)) == host_locks.STRIPES
        os.unlink(one)  # as if its master was killed and the file removed alone: its semaphores stay
        EdgeTable(one).open_bucket_locks()  # the next speedproxy at that path
        assert _stripe_name(one) != first
        assert _semaphores_named(first) == []  # the leftovers were removed
        second = _stripe_name(one)
        os.unlink(one)
        EdgeTable(three).open_bucket_locks()  # another file of the directory
        assert _semaphores_named(second) == []
        for path in (two, three):  # live files' are untouched
            assert len(_semaphores_named(_stripe_name(path))) == host_locks.STRIPES
    finally:
        for path in (one, two, three):
            remove_edge_state(path)


def test_removing_the_state_file_removes_its_semaphores(edge_path: str) -> None:
    table = EdgeTable(edge_path)
    HostEdgeState(table).take(b"k", 1.0, 1.0)
    name = _stripe_name(edge_path)
    assert len(_semaphores_named(name)) == host_locks.STRIPES
    remove_edge_state(edge_path)
    assert not os.path.exists(edge_path)
    assert _semaphores_named(name) == []
    with pytest.raises(OSError):
        host_locks.open_stripe(name)
    assert HostEdgeState(table).take(b"k", 1.0, 1.0).allowed is False  # this process's stay mapped


class _NoSemaphores:
    def __init__(self, *args: object) -> None:
        raise PermissionError(13, "Permission denied")


def test_without_semaphores_every_process_of_the_file_uses_fcntl(edge_path: str, monkeypatch) -> None:
    said: List[dict] = []
    globalLogPublisher.addObserver(said.append)
    try:
        with monkeypatch.context() as patched:
            patched.setattr(host_locks, "SemLock", _NoSemaphores)
            first = HostEdgeState(EdgeTable(edge_path), monotonic=lambda: 5.0)
            assert first.take(b"k", 1.0, 2.0).allowed
    finally:
        globalLogPublisher.removeObserver(said)
    assert first.table.bucket_locks == ()
    assert any("use fcntl" in event.get("log_format", "") for event in said)
    with open(edge_path, "rb") as file:
        file.seek(LOCKS_AT)
        assert file.read(LOCKS.size).rstrip(b"\0") == FCNTL_LOCKS
    second = HostEdgeState(EdgeTable(edge_path), monotonic=lambda: 5.0)  # semaphores work here: not used
    assert second.take(b"k", 1.0, 2.0).allowed
    assert second.table.bucket_locks == ()
    assert _take_in_processes(edge_path, 2, 50, 60, locks="fcntl") == 60  # exact with fcntl locks too
