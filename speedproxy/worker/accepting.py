"""Share new client connections evenly between workers.

Every worker waits on the same inherited listening socket and all of them
are woken for a new connection; whichever calls ``accept`` first wins, and
Twisted accepts up to 100 connections per wake-up.  A burst of keep-alive
connections (a load balancer, wrk, a browser fleet after a restart) can land
mostly on one worker, which then serves most of the traffic on one core
while the others idle.  nginx counters this with ``accept_mutex`` and
``ngx_accept_disabled``; :class:`AcceptBalancer` does the same with the
active-connection counts every worker publishes in the shared stats
segment: a worker holding more than its share leaves the pending connection
to the others for a moment, and no worker takes more than its share from one
burst.  A connection is never left waiting for long: after ``max_defer``
seconds the worker accepts anyway, and stops deferring for ``bypass``
seconds (another worker is stuck, starting or gone).
"""

from __future__ import annotations

import select
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime


#: Connections a worker under its share may accept per wake-up, at least.
MIN_ACCEPTS = 4


class AcceptBalancer:
    """Decides, per wake-up of a listening port, whether this worker accepts.

    ``mine`` returns this worker's open client connections, ``total`` the
    sum over all workers, ``workers`` how many workers share the socket.
    """

    def __init__(
        self,
        port: Any,
        clock: IReactorTime,
        mine: Callable[[], int],
        total: Callable[[], int],
        workers: Callable[[], int],
        slack: int = 1,
        pause: float = 0.002,
        max_defer: float = 0.05,
        bypass: float = 1.0,
    ) -> None:
        self.port = port
        self.clock = clock
        self.mine = mine
        self.total = total
        self.workers = workers
        #: Connections over the average a worker may hold and still accept.
        self.slack = slack
        #: How long a worker over its share stops watching the socket.
        self.pause = pause
        #: Longest a pending connection is left to the other workers.
        self.max_defer = max_defer
        #: How long to accept everything after the others left one waiting.
        self.bypass = bypass
        #: Wake-ups this worker left to the others (for tests and debugging).
        self.deferred = 0
        self._deferred_since: Optional[float] = None
        self._bypass_until = 0.0
        self._resume_call: Optional[IDelayedCall] = None

    def install(self) -> None:
        """Route the port's read events (new connections) through :meth:`doRead`."""
        self.port.doRead = self.doRead

    def doRead(self) -> Any:
        port = self.port
        workers = self.workers()
        if workers > 1 and not (self._bypass_until and self.clock.seconds() < self._bypass_until):
            mine = self.mine()
            allowed = self.total() / workers + self.slack
            if mine < allowed:
                # Take about our share of a burst (a few at least, so a large
                # burst does not overflow the backlog); the others take the rest.
                port.numberAccepts = max(MIN_ACCEPTS, int(allowed - mine))
            elif self._defer():
                return None
            else:
                port.numberAccepts = 100  # the others are not taking any
        else:
            port.numberAccepts = 100
        self._deferred_since = None
        return type(port).doRead(port)

    def _defer(self) -> bool:
        """Leave the pending connections to the other workers for a moment."""
        now = self.clock.seconds()
        if self._deferred_since is None:
            self._deferred_since = now
        elif now - self._deferred_since >= self.max_defer:
            # Nobody else took it: serve it, and everything for a while.
            self._bypass_until = now + self.bypass
            return False
        self.deferred += 1
        self.port.stopReading()
        if self._resume_call is None:
            self._resume_call = self.clock.callLater(self.pause, self._resume)
        return True

    def _resume(self) -> None:
        self._resume_call = None
        port = self.port
        if port.connected and not port.disconnecting:
            if not _readable(port.fileno()):
                self._deferred_since = None  # another worker took it
            port.startReading()

    def stop(self) -> None:
        """Forget the pending resume (the port is closing)."""
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None


def _readable(fd: int) -> bool:
    """Is a connection still waiting on the listening socket ``fd``?"""
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False
