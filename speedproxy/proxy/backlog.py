"""Requests waiting for a backend slot, per upstream group (HAProxy's queue).

When every backend of a group that may serve is at ``max_conn``, a request
does not get a 503 at once: it waits in its group's :class:`Backlog` in this
worker, first in, first out, for at most ``server.queue_timeout``.  The head
of the queue is offered a slot as soon as a request to the group ends in this
worker, and every :attr:`Backlog.poll_interval` while requests wait, since
other workers free slots too (in-flight counts are shared through the stats
segment).  Beyond ``server.queue_size`` waiting requests, or after the
timeout, the answer is a 503.

The queue itself (:attr:`UpstreamGroup.waiting`) is plain state of the
group, so the data path can tell with one truth test whether anyone waits;
this class holds the timer and the accounting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from speedproxy.stats.segment import U_QUEUE_FULL, U_QUEUE_TIMEOUTS, U_QUEUED

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.stats.shared import SharedView
    from speedproxy.upstreams import UpstreamGroup


class Waiter(Protocol):
    """What a backlog needs of a waiting request (an :class:`Exchange`)."""

    #: The backlog it waits in (``None`` once it left).
    waiting: Optional["Backlog"]
    #: Clock time at which it started waiting.
    queued_at: float
    #: Seconds it waited, once it left.
    queue_time: float

    def queue_turn(self) -> bool:
        """At the head of the queue: take a slot if one is free (True), else keep waiting."""

    def queue_timed_out(self) -> None:
        """Waited ``queue_timeout``: answer 503."""


class Backlog:
    """The waiting requests of one upstream group in one worker."""

    #: How often waiting requests look for a slot freed by another worker.
    poll_interval = 0.05

    def __init__(self, clock: IReactorTime, group: "UpstreamGroup", shared: Optional["SharedView"] = None) -> None:
        self.clock = clock
        self.group = group
        self.shared = shared
        #: ``server.queue_timeout`` (0: no queue).
        self.timeout = 5.0
        #: ``server.queue_size``.
        self.size = 1000
        self._timer: Optional[IDelayedCall] = None

    def configure(self, timeout: float, size: int, shared: Optional["SharedView"] = None) -> None:
        """Take new settings; requests already waiting keep their place."""
        self.timeout = timeout
        self.size = size
        if shared is not None:
            self.shared = shared
        if self.group.waiting:
            self._schedule(0.0)  # a shorter timeout may already have passed

    @property
    def enabled(self) -> bool:
        return self.timeout > 0 and self.size > 0

    def __len__(self) -> int:
        return len(self.group.waiting)

    # -- joining and leaving ----------------------------------------------------

    def enqueue(self, waiter: Waiter) -> bool:
        """Queue ``waiter`` at the tail; ``False`` (and counted) when the queue is full."""
        waiting = self.group.waiting
        if len(waiting) >= self.size:
            self._count(U_QUEUE_FULL)
            return False
        waiter.waiting = self
        waiter.queued_at = self.clock.seconds()
        waiter.queue_time = 0.0
        waiting.append(waiter)
        self._count(U_QUEUED)
        self._publish()
        if len(waiting) == 1:
            self._schedule(min(self.timeout, self.poll_interval))
        return True

    def remove(self, waiter: Waiter) -> None:
        """``waiter`` leaves the queue (it got a slot, failed or its client left)."""
        waiter.waiting = None
        waiting = self.group.waiting
        if waiting and waiting[0] is waiter:
            waiting.popleft()
        else:
            try:
                waiting.remove(waiter)
            except ValueError:
                return
        self._publish()
        if not waiting:
            self._cancel()

    def slot_freed(self) -> None:
        """A request to the group ended here: serve the head soon.

        Soon, not now: the caller is still finishing that request (its
        connection goes back to the pool first, ready for the next one).
        """
        self._schedule(0.0)

    # -- serving ------------------------------------------------------------------

    def serve(self) -> None:
        """Answer timed-out requests, then give free slots to the oldest."""
        self._timer = None
        waiting = self.group.waiting
        now = self.clock.seconds()
        expired = now - self.timeout
        while waiting:
            head = waiting[0]
            if head.queued_at <= expired:
                self._count(U_QUEUE_TIMEOUTS)
                head.queue_timed_out()
                if waiting and waiting[0] is head:  # it did not leave: never loop on it
                    self.remove(head)
                continue
            if not head.queue_turn():
                break
            if waiting and waiting[0] is head:
                self.remove(head)
        if waiting:
            due = waiting[0].queued_at + self.timeout - now
            self._schedule(max(0.0, min(due, self.poll_interval)))

    def stop(self) -> None:
        """Stop the timer (the worker is stopping)."""
        self._cancel()

    # -- internals ------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        """Make sure :meth:`serve` runs within ``delay`` seconds."""
        timer = self._timer
        if timer is not None and timer.active():
            if timer.getTime() <= self.clock.seconds() + delay:
                return
            timer.cancel()
        self._timer = self.clock.callLater(delay, self.serve)

    def _cancel(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _publish(self) -> None:
        shared = self.shared
        if shared is not None:
            shared.set_queue(self.group.stats_index, len(self.group.waiting))

    def _count(self, word: int) -> None:
        shared = self.shared
        if shared is not None:
            shared.add_upstream(self.group.stats_index, word)
