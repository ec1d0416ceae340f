"""One periodic sweep enforces every connection deadline of a worker.

Arming and cancelling a ``callLater`` per request costs several microseconds
on the hot path; instead each watched object keeps a plain ``deadline``
(reactor seconds, ``0`` for none) that it moves as it makes progress, and a
single looping call fires ``on_timeout`` on the ones that are late.  Deadlines
are therefore honoured within one sweep interval.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Protocol as _Protocol, Set

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall


class Watched(_Protocol):
    """What the sweeper needs of a watched connection."""

    deadline: float

    def on_timeout(self, now: float) -> None:
        """The deadline passed: act on it."""


class TimeoutSweeper:
    """Fires ``on_timeout`` on watched objects whose ``deadline`` has passed."""

    def __init__(self, clock: IReactorTime, interval: float = 0.25) -> None:
        self.clock = clock
        self.interval = interval
        self._watched: Set[Watched] = set()
        self._loop: Optional[LoopingCall] = None
        #: Called with the current time at every sweep (housekeeping).
        self.also: List[Callable[[float], None]] = []

    def watch(self, item: Watched) -> None:
        self._watched.add(item)

    def unwatch(self, item: Watched) -> None:
        self._watched.discard(item)

    def start(self) -> None:
        """Start sweeping on the injected clock."""
        if self._loop is None:
            self._loop = LoopingCall(self.sweep)
            self._loop.clock = self.clock
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def sweep(self) -> None:
        """Check every deadline once."""
        now = self.clock.seconds()
        late = [item for item in self._watched if 0 < item.deadline <= now]
        for item in late:
            if 0 < item.deadline <= now:
                item.on_timeout(now)
        for task in self.also:
            task(now)

    def __len__(self) -> int:
        return len(self._watched)
