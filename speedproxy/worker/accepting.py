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
seconds the worker accepts anyway (another worker may be stuck or gone).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IReactorTime


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
        #: Wake-ups this worker left to the others (for tests and debugging).
        self.deferred = 0
        self._deferred_since = 0.0
        self._last_deferred = 0.0
        self._resume_call: Optional[IDelayedCall] = None

    def install(self) -> None:
        """Route the port's read events (new connections) through :meth:`doRead`."""
        self.port.doRead = self.doRead

    def doRead(self) -> Any:
        port = self.port
        workers = self.workers()
        if workers > 1:
            mine = self.mine()
            allowed = self.total() / workers + self.slack
            if mine >= allowed and self._defer():
                return None
            # Take at most our share of a burst; the others take the rest.
            port.numberAccepts = max(1, int(allowed - mine))
        self._deferred_since = 0.0
        return type(port).doRead(port)

    def _defer(self) -> bool:
        """Leave the pending connections to the other workers for a moment."""
        now = self.clock.seconds()
        if not self._deferred_since or now - self._last_deferred > self.pause * 5:
            self._deferred_since = now  # a new burst, not the same one still waiting
        elif now - self._deferred_since >= self.max_defer:
            return False  # nobody else took it: serve it ourselves
        self._last_deferred = now
        self.deferred += 1
        self.port.stopReading()
        if self._resume_call is None:
            self._resume_call = self.clock.callLater(self.pause, self._resume)
        return True

    def _resume(self) -> None:
        self._resume_call = None
        port = self.port
        if port.connected and not port.disconnecting:
            port.startReading()

    def stop(self) -> None:
        """Forget the pending resume (the port is closing)."""
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None
