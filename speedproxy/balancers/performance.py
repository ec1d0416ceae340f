"""``performance``: traffic follows measured speed, reported load and weight.

Each candidate gets a *dynamic weight* on every pick, and the pick itself is
smooth weighted round robin over those dynamic weights (see
:mod:`speedproxy.balancers.weight`), so shares shift smoothly as measurements
change instead of flapping to whichever backend looks best right now::

    dynamic = weight                                   # configured weight
            * (fastest + 1ms) / (ewma + 1ms)           # speed, 1.0 for the fastest
            * (1 - 0.5 * load)                         # reported load, 0..1
            / (1 + active_connections)                 # requests in flight
            * ramp                                     # slow start, 0.1..1

``ewma`` is :attr:`Backend.ewma_response_time` in seconds; a backend without
measurements yet (0.0) is given the average EWMA of the measured candidates,
and when nobody is measured the speed factor is 1 for all.  ``fastest`` is the
smallest EWMA among the candidates, so the factor is relative: 5 ms against
200 ms gives the fast backend about 33 times the slow one's share.

``load`` is :attr:`Backend.reported_load`, the load the backend reports about
itself as a *fraction of capacity*, 0.0 (idle or unknown) to 1.0 (saturated);
whoever parses a CPU percentage stores ``percent / 100``.  Values outside 0..1
are clamped.  A saturated backend keeps half of its share (``1 - 0.5``).

``ramp`` is the slow start of a new or recovered backend: when
:attr:`Backend.up_since` (the clock time it became available; 0.0 = unknown,
no ramp) lies less than ``slow_start`` seconds before now, its weight is scaled
by the elapsed fraction of that window, at least :data:`SLOW_START_FLOOR`.  An
``up_since`` in the future (clock mismatch or a wall-clock step) means no ramp.

The clock is injected (anything with ``seconds()``, e.g. the reactor or
``twisted.internet.task.Clock``); the default reads
:func:`twisted.python.runtime.seconds`, the same wall clock as
``reactor.seconds()``, without importing the reactor.  It is read only when a
candidate has ``up_since`` set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Protocol, Sequence, Tuple

from twisted.python.runtime import seconds as _runtime_seconds
from zope.interface import implementer

from speedproxy.balancers.interface import IBalancer
from speedproxy.balancers.weight import smooth_pick

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.upstreams import Backend


class SupportsSeconds(Protocol):
    """The part of ``IReactorTime`` the balancer uses."""

    def seconds(self) -> float:
        """Current time in seconds."""


#: Added to every EWMA so that near-zero latencies do not explode the ratio.
LATENCY_FLOOR = 0.001
#: Share lost by a backend reporting full load (``reported_load == 1``).
LOAD_PENALTY = 0.5
#: Default slow-start window in seconds.
DEFAULT_SLOW_START = 30.0
#: Smallest fraction of its weight a backend gets at the start of slow start.
SLOW_START_FLOOR = 0.1


class RuntimeClock:
    """Default clock: the same wall-clock seconds ``reactor.seconds()`` returns."""

    def seconds(self) -> float:
        """Current time in seconds."""
        return _runtime_seconds()


@implementer(IBalancer)
class PerformanceBalancer:
    """Smooth weighted round robin over speed-, load- and ramp-adjusted weights."""

    def __init__(
        self,
        clock: Optional[SupportsSeconds] = None,
        slow_start: float = DEFAULT_SLOW_START,
    ) -> None:
        """
        :param clock: provides ``seconds()`` in the same time base as
            :attr:`Backend.up_since`; defaults to :class:`RuntimeClock`.
        :param slow_start: ramp-up window in seconds; 0 disables slow start.
        """
        self.clock: SupportsSeconds = clock if clock is not None else RuntimeClock()
        self.slow_start = float(slow_start)
        #: Smooth-weight counters keyed by backend identity.
        self._current: Dict["Backend", float] = {}

    def update(self, backends: Sequence["Backend"]) -> None:
        """Reset the smooth-weight counters."""
        self._current = {backend: 0.0 for backend in backends}

    def dynamic_weights(self, candidates: Sequence["Backend"]) -> Dict[str, float]:
        """The dynamic weight of each candidate by id, as :meth:`pick` uses them.

        For diagnostics (admin API, tests); allocates, so not used by ``pick``.
        """
        fallback, reference = self._latency_stats(candidates)
        return {
            backend.config.id: self._dynamic_weight(backend, fallback, reference)
            for backend in candidates
        }

    @staticmethod
    def _latency_stats(candidates: Sequence["Backend"]) -> Tuple[float, float]:
        """``(ewma for unmeasured backends, fastest ewma + floor)``."""
        total = 0.0
        measured = 0
        fastest = 0.0
        for backend in candidates:
            ewma = backend.ewma_response_time
            if ewma > 0.0:
                total += ewma
                if measured == 0 or ewma < fastest:
                    fastest = ewma
                measured += 1
        fallback = total / measured if measured else 0.0
        return fallback, fastest + LATENCY_FLOOR

    def _dynamic_weight(self, backend: "Backend", fallback: float, reference: float) -> float:
        """Dynamic weight of one backend (see the module docstring)."""
        ewma = backend.ewma_response_time
        if ewma <= 0.0:
            ewma = fallback
        weight = backend.config.weight * reference / (ewma + LATENCY_FLOOR)
        load = backend.reported_load
        if load > 0.0:
            weight *= 1.0 - LOAD_PENALTY * (load if load < 1.0 else 1.0)
        connections = backend.active_connections
        if connections > 0:
            weight /= 1 + connections
        up_since = backend.up_since
        if up_since > 0.0 and self.slow_start > 0.0:
            elapsed = self.clock.seconds() - up_since
            if 0.0 <= elapsed < self.slow_start:
                ramp = elapsed / self.slow_start
                weight *= ramp if ramp > SLOW_START_FLOOR else SLOW_START_FLOOR
        return weight

    def pick(self, candidates: Sequence["Backend"], client_key: str) -> Optional["Backend"]:
        """Two O(n) passes (latency stats, then smooth weighted round robin)."""
        if len(candidates) == 1:
            return candidates[0]
        fallback, reference = self._latency_stats(candidates)
        dynamic_weight = self._dynamic_weight
        return smooth_pick(
            self._current, candidates, lambda backend: dynamic_weight(backend, fallback, reference)
        )
