"""Worker supervision (:mod:`speedproxy.master.supervision`): respawn with backoff, resize, stop."""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.python.failure import Failure

from master_unit_support import FakeControl, control_of, two_worker_master
from speedproxy.config import parse_config
from speedproxy.master.control import Shutdown
from speedproxy.master.service import MasterService
from speedproxy.master.supervision import (
    MAX_BACKOFF,
    STABLE_AFTER,
    Supervisor,
    WorkerHandle,
    respawn_delay,
    worker_count,
)


class FakeReader:
    def __init__(self) -> None:
        self.retired: List[int] = []

    def retire(self, slot: int) -> None:
        self.retired.append(slot)


@pytest.fixture
def master() -> MasterService:
    service = two_worker_master()
    service.reader = FakeReader()  # type: ignore[assignment]
    return service


@pytest.fixture
def spawned(master: MasterService, monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Slots the supervisor starts a process for (no process is started: the
    handle gets a fake channel, so nothing is ever sent a signal)."""
    slots: List[int] = []

    def spawn(handle: WorkerHandle) -> None:
        master.workers[handle.slot] = handle
        handle.pid = 200 + handle.slot
        handle.control = FakeControl()  # type: ignore[assignment]
        handle.started = master.reactor.seconds()
        slots.append(handle.slot)

    monkeypatch.setattr(master.supervisor, "spawn", spawn)
    return slots


def _died(code: int = 1) -> Failure:
    return Failure(ProcessTerminated(exitCode=code))


def test_the_master_composes_a_supervisor_and_shows_its_workers(master) -> None:
    assert isinstance(master.supervisor, Supervisor)
    assert master.workers is master.supervisor.workers
    assert sorted(master.workers) == [0, 1]


def test_worker_count_is_one_per_cpu_for_auto() -> None:
    import os

    assert worker_count(parse_config("server: {workers: 3}\n")) == 3
    assert worker_count(parse_config("server: {workers: auto}\n")) == (os.cpu_count() or 1)


def test_the_backoff_starts_at_once_doubles_and_is_capped() -> None:
    assert [respawn_delay(n) for n in (0, 1, 2, 3, 4)] == [0.0, 0.0, 0.2, 0.4, 0.8]
    assert respawn_delay(30) == MAX_BACKOFF


def test_a_dead_worker_is_respawned_and_counted(master, spawned) -> None:
    handle = master.workers[1]
    exits: List[Any] = []
    handle.exited.addCallback(exits.append)
    master.supervisor.exited(handle, _died())
    assert exits == [None] and handle.pid == 0 and handle.control is None and not handle.ready
    assert master.reader.retired == [1]
    assert master.restarts == 1
    assert spawned == []  # on the next turn of the reactor
    master.reactor.advance(0)
    assert spawned == [1] and master.workers[1] is handle


def test_quick_exits_back_off_and_a_stable_worker_resets_it(master, spawned) -> None:
    handle = master.workers[0]
    master.supervisor.exited(handle, _died())
    master.reactor.advance(0)
    master.supervisor.exited(handle, _died())  # died again at once: second quick exit
    master.reactor.advance(0.1)
    assert spawned == [0]
    master.reactor.advance(0.1)
    assert spawned == [0, 0]
    master.reactor.advance(STABLE_AFTER)
    master.supervisor.exited(handle, _died())
    assert handle.quick_exits == 0
    master.reactor.advance(0)
    assert spawned == [0, 0, 0]


def test_a_retiring_worker_that_exits_is_forgotten(master, spawned) -> None:
    handle = master.workers[1]
    handle.retiring = True
    master.supervisor.exited(handle, Failure(ProcessDone(0)))
    master.reactor.advance(MAX_BACKOFF)
    assert 1 not in master.workers and spawned == [] and master.restarts == 0


def test_resize_starts_new_slots_and_drains_extra_ones(master, spawned) -> None:
    master.supervisor.resize(3, grace=7.0)
    assert spawned == [2]
    master.supervisor.resize(1, grace=7.0)
    assert [h.slot for h in master.workers.values() if h.retiring] == [1, 2]
    for slot in (1, 2):
        (arguments, _), = control_of(master, slot).pending(Shutdown)
        assert arguments == {"grace": 7.0}
    assert not control_of(master, 0).pending(Shutdown)


def test_resize_drops_a_slot_waiting_to_be_respawned(master, spawned) -> None:
    master.supervisor.exited(master.workers[1], _died())
    master.supervisor.resize(1, grace=1.0)
    master.reactor.advance(MAX_BACKOFF)
    assert sorted(master.workers) == [0] and spawned == []


def test_resize_never_exceeds_the_stats_segment(master, spawned) -> None:
    master.supervisor.resize(100, grace=1.0)
    assert len(master.workers) == master.segment.layout.slots


def test_stop_drains_every_worker_and_fires_once_all_exited(master, spawned) -> None:
    stopped: List[Any] = []
    master.supervisor.stop(3.0).addCallback(stopped.append)
    for slot in (0, 1):
        (arguments, _), = control_of(master, slot).pending(Shutdown)
        assert arguments == {"grace": 3.0}
    master.supervisor.exited(master.workers[0], Failure(ProcessDone(0)))
    assert stopped == []
    master.supervisor.exited(master.workers[1], Failure(ProcessDone(0)))
    assert len(stopped) == 1 and master.workers == {}
    assert not master.reactor.getDelayedCalls()  # the kill timer is cancelled
    master.reactor.advance(MAX_BACKOFF)
    assert spawned == []


def test_connected_and_live_workers(master) -> None:
    master.workers[2] = WorkerHandle(2, pid=102, control=FakeControl(), retiring=True)  # type: ignore[arg-type]
    master.workers[3] = WorkerHandle(3, pid=103)
    assert sorted(h.slot for h in master.supervisor.connected()) == [0, 1, 2]
    assert sorted(h.slot for h in master.supervisor.live()) == [0, 1]
