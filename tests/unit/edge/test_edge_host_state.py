"""Tests for :mod:`speedproxy.edge.host_state`: buckets, sessions and counts across processes."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import List

import pytest
from zope.interface.verify import verifyObject

from speedproxy.edge import host_state
from speedproxy.edge.host_state import HostEdgeState, SessionStoreFull
from speedproxy.edge.host_table import EdgeTable, client_bytes, client_text, remove_edge_state
from speedproxy.edge.state import IEdgeState, SessionLimitReached, SessionStatus


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _state(path=None, clock=None, wall=None) -> HostEdgeState:
    return HostEdgeState(EdgeTable(path), monotonic=clock or Clock(), wall=wall or Clock(1.7e9))


def test_provides_the_interface() -> None:
    assert verifyObject(IEdgeState, _state())


def test_bucket_starts_full_refills_at_rate_and_caps_at_burst() -> None:
    clock = Clock()
    state = _state(clock=clock)
    answers = [state.take(b"k", 2.0, 4.0) for _ in range(5)]
    assert [a.allowed for a in answers] == [True, True, True, True, False]
    assert [a.remaining for a in answers[:4]] == [3, 2, 1, 0]
    assert answers[4].retry_after == pytest.approx(0.5)
    assert answers[4].reset == pytest.approx(2.0)
    clock.now += 0.5  # one token back
    assert state.take(b"k", 2.0, 4.0).allowed
    assert not state.take(b"k", 2.0, 4.0).allowed
    clock.now += 3600  # refill never passes the burst
    assert sum(state.take(b"k", 2.0, 4.0).allowed for _ in range(10)) == 4


def test_buckets_are_separate_per_key() -> None:
    state = _state()
    assert state.take(b"a", 1.0, 1.0).allowed
    assert not state.take(b"a", 1.0, 1.0).allowed
    assert state.take(b"b", 1.0, 1.0).allowed


def test_full_set_reuses_a_refilled_bucket_before_a_busy_one(monkeypatch) -> None:
    monkeypatch.setattr(host_state, "key_hash", lambda key: int(key) * host_state.BUCKET_SETS + 1)
    clock = Clock()
    state = _state(clock=clock)
    for key in range(host_state.WAYS):  # every way of set 1 in use, slowly refilling
        state.take(str(key + 1).encode(), 0.001, 2.0)
    busy = b"2"
    state.take(busy, 0.001, 2.0)  # bucket 2 is now empty: must not be the one reused
    state.take(str(host_state.WAYS + 1).encode(), 0.001, 2.0)  # a new key evicts the nearest to full
    assert not state.take(busy, 0.001, 2.0).allowed


def test_session_lifecycle() -> None:
    wall = Clock(1.7e9)
    state = _state(wall=wall)
    session = state.open_session("192.0.2.1", 60.0, 3)
    assert (session.client, session.expires - session.created) == ("192.0.2.1", 60.0)
    assert len(session.id) == 22
    assert state.check_session(session.id) is SessionStatus.VALID
    assert state.list_sessions("192.0.2.1") == [session]
    assert state.revoke_session(session.id)
    assert state.check_session(session.id) is SessionStatus.REVOKED
    assert not state.revoke_session(session.id)
    other = state.open_session("192.0.2.1", 60.0, 3)
    wall.now += 61
    assert state.check_session(other.id) is SessionStatus.EXPIRED
    assert state.list_sessions(None) == []


@pytest.mark.parametrize("token", ["", "x" * 22, "AAAAAAAAAAAAAAAAAAAAAA", "////////////////////////", "é" * 22])
def test_unknown_and_malformed_ids(token: str) -> None:
    state = _state()
    state.open_session("192.0.2.1", 60.0, 3)
    assert state.check_session(token) is SessionStatus.UNKNOWN
    assert not state.revoke_session(token)


def test_a_forged_id_naming_a_live_record_is_unknown() -> None:
    state = _state()
    session = state.open_session("192.0.2.1", 60.0, 3)
    forged = session.id[:10] + ("A" if session.id[10] != "A" else "B") + session.id[11:]
    assert state.check_session(forged) is SessionStatus.UNKNOWN


def test_max_per_client_counts_live_sessions_only() -> None:
    wall = Clock(1.7e9)
    state = _state(wall=wall)
    first = state.open_session("2001:db8::1", 10.0, 2)
    state.open_session("2001:db8::1", 100.0, 2)
    with pytest.raises(SessionLimitReached):
        state.open_session("2001:db8::1", 100.0, 2)
    state.open_session("2001:db8::2", 100.0, 2)  # another client
    state.revoke_session(first.id)
    third = state.open_session("2001:db8::1", 100.0, 2)
    with pytest.raises(SessionLimitReached):
        state.open_session("2001:db8::1", 100.0, 2)
    wall.now += 200
    assert state.check_session(third.id) is SessionStatus.EXPIRED
    state.open_session("2001:db8::1", 100.0, 2)  # the others expired
    state.open_session("2001:db8::1", 100.0, 2)


def test_a_full_session_set_refuses_instead_of_evicting(monkeypatch) -> None:
    state = _state()
    clients = []
    target = None
    for n in range(200000):  # clients of one set
        raw = client_bytes(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        index = int.from_bytes(host_state.hashlib.blake2b(raw, digest_size=8).digest(), "little") % host_state.SESSION_SETS
        if target is None:
            target = index
        if index == target:
            clients.append(client_text(raw))
        if len(clients) == host_state.SESSION_WAYS + 1:
            break
    ids = [state.open_session(client, 60.0, 3).id for client in clients[:-1]]
    with pytest.raises(SessionStoreFull):
        state.open_session(clients[-1], 60.0, 3)
    assert all(state.check_session(i) is SessionStatus.VALID for i in ids)


def _take_many(path: str, count: int, out: "multiprocessing.Queue[int]") -> None:
    state = HostEdgeState(EdgeTable(path), monotonic=lambda: 5.0)  # a frozen clock: no refill
    out.put(sum(state.take(b"shared", 1.0, 100.0).allowed for _ in range(count)))


def _open_many(path: str, out: "multiprocessing.Queue[int]") -> None:
    state = HostEdgeState(EdgeTable(path))
    opened = 0
    for _ in range(20):
        try:
            state.open_session("198.51.100.9", 60.0, 7)
            opened += 1
        except SessionLimitReached:
            pass
    out.put(opened)


@pytest.mark.parametrize("target", ["take", "open"])
def test_processes_never_overspend(tmp_path: Path, target: str) -> None:
    """Four processes racing on one bucket (or one client's sessions) get exactly the limit."""
    path = str(tmp_path / "edge")
    EdgeTable(path).close()
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    if target == "take":
        workers = [context.Process(target=_take_many, args=(path, 60, out)) for _ in range(4)]
    else:
        workers = [context.Process(target=_open_many, args=(path, out)) for _ in range(4)]
    for worker in workers:
        worker.start()
    results: List[int] = [out.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    remove_edge_state(path)  # (and its semaphores)
    assert sum(results) == (100 if target == "take" else 7)




def test_a_session_belongs_to_its_realm_and_client(tmp_path: Path) -> None:
    path = str(tmp_path / "edge")
    state = _state(path)
    session = state.open_session("192.0.2.1", 60.0, 3, "video")
    other_process = _state(path)
    assert other_process.check_session(session.id, "video") is SessionStatus.VALID
    assert other_process.check_session(session.id, "premium") is SessionStatus.UNKNOWN
    assert other_process.check_session(session.id, "video", "192.0.2.1") is SessionStatus.VALID
    assert other_process.check_session(session.id, "video", "192.0.2.2") is SessionStatus.UNKNOWN
    assert other_process.check_session(session.id) is SessionStatus.VALID  # the admin API: any realm
    assert other_process.revoke_session(session.id)
    assert other_process.check_session(session.id, "video") is SessionStatus.REVOKED  # the realm outlives revocation


def test_a_session_is_handed_back_for_the_same_reuse_tag() -> None:
    state = _state()
    first = state.open_session("192.0.2.1", 60.0, 1, "video", b"expires=1")
    assert state.open_session("192.0.2.1", 60.0, 1, "video", b"expires=1").id == first.id
    with pytest.raises(SessionLimitReached):
        state.open_session("192.0.2.1", 60.0, 1, "video", b"expires=2")
    with pytest.raises(SessionLimitReached):  # another realm's link is another session
        state.open_session("192.0.2.1", 60.0, 1, "radio", b"expires=1")
    with pytest.raises(SessionLimitReached):  # no tag: never reused
        state.open_session("192.0.2.1", 60.0, 1, "video")
    assert state.revoke_session(first.id)
    assert state.open_session("192.0.2.1", 60.0, 1, "video", b"expires=1").id != first.id
