"""Tests for :mod:`speedproxy.proxy.timeouts`."""

from __future__ import annotations

from typing import List, Optional

from twisted.internet.task import Clock

from speedproxy.proxy.timeouts import TimeoutSweeper


class Item:
    def __init__(self, name: str, deadline: float, log: List[str]) -> None:
        self.name = name
        self.deadline = deadline
        self.log = log
        self.other: Optional["Item"] = None
        self.fired_at: List[float] = []

    def on_timeout(self, now: float) -> None:
        self.log.append(self.name)
        self.fired_at.append(now)
        self.deadline = 0.0
        if self.other is not None:
            self.other.deadline = 0.0  # e.g. closing one side resets the other


def test_sweep_fires_only_late_items() -> None:
    clock = Clock()
    sweeper = TimeoutSweeper(clock)
    log: List[str] = []
    late = Item("late", 5.0, log)
    exact = Item("exact", 10.0, log)
    early = Item("early", 11.0, log)
    none = Item("none", 0.0, log)
    for item in (late, exact, early, none):
        sweeper.watch(item)
    assert len(sweeper) == 4
    clock.advance(10)
    sweeper.sweep()
    assert sorted(log) == ["exact", "late"]
    assert late.fired_at == [10.0]
    log.clear()
    sweeper.sweep()
    assert log == []  # deadlines were reset by on_timeout


def test_unwatch() -> None:
    clock = Clock()
    sweeper = TimeoutSweeper(clock)
    log: List[str] = []
    item = Item("a", 1.0, log)
    sweeper.watch(item)
    sweeper.watch(item)
    assert len(sweeper) == 1
    sweeper.unwatch(item)
    sweeper.unwatch(item)  # idempotent
    clock.advance(2)
    sweeper.sweep()
    assert log == [] and len(sweeper) == 0


def test_deadline_reset_during_sweep_is_honoured() -> None:
    clock = Clock()
    sweeper = TimeoutSweeper(clock)
    log: List[str] = []
    a, b = Item("a", 1.0, log), Item("b", 1.0, log)
    a.other, b.other = b, a
    sweeper.watch(a)
    sweeper.watch(b)
    clock.advance(1)
    sweeper.sweep()
    assert len(log) == 1


def test_watch_during_timeout_is_safe() -> None:
    clock = Clock()
    sweeper = TimeoutSweeper(clock)
    log: List[str] = []

    class Spawner(Item):
        def on_timeout(self, now: float) -> None:
            super().on_timeout(now)
            sweeper.watch(Item("child", now, log))
            sweeper.unwatch(self)

    sweeper.watch(Spawner("parent", 1.0, log))
    clock.advance(1)
    sweeper.sweep()
    assert log == ["parent"]
    sweeper.sweep()
    assert log == ["parent", "child"]


def test_start_sweeps_on_the_clock_and_stop() -> None:
    clock = Clock()
    sweeper = TimeoutSweeper(clock, interval=0.5)
    log: List[str] = []
    item = Item("a", 1.2, log)
    sweeper.watch(item)
    sweeper.start()
    sweeper.start()  # idempotent
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.5)
    clock.advance(0.5)
    assert log == []
    clock.advance(0.5)
    assert log == ["a"]
    assert item.fired_at == [1.5]  # within one interval of the deadline
    sweeper.stop()
    assert clock.getDelayedCalls() == []
    item.deadline = 2.0
    clock.advance(5)
    assert log == ["a"]
    sweeper.stop()  # idempotent


def test_restart_after_stop() -> None:
    clock = Clock()
    sweeper = TimeoutSweeper(clock, interval=1.0)
    log: List[str] = []
    sweeper.watch(Item("a", 3.0, log))
    sweeper.start()
    sweeper.stop()
    sweeper.start()
    clock.pump([1.0] * 3)
    assert log == ["a"]
