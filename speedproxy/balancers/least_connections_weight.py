"""``least_connections_weight``: fewest requests in flight per unit of weight.

The candidate with the lowest ``active_connections / weight`` wins (compared
by cross-multiplication, so no float division).  When several candidates share
the lowest ratio -- notably when all are idle -- the tie is broken by smooth
weighted round robin among the tied ones, as nginx's ``least_conn`` does, so
idle or equally loaded backends receive traffic in the ratio of their weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Sequence

from zope.interface import implementer

from speedproxy.balancers.interface import IBalancer
from speedproxy.balancers.weight import smooth_pick

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.upstreams import Backend


@implementer(IBalancer)
class LeastConnectionsWeightBalancer:
    """Lowest connections/weight ratio wins; ties by smooth weighted round robin."""

    def __init__(self) -> None:
        #: Smooth-weight counters for tie breaking, keyed by backend identity.
        self._current: Dict["Backend", int] = {}

    def update(self, backends: Sequence["Backend"]) -> None:
        """Reset the tie-breaking counters."""
        self._current = {backend: 0 for backend in backends}

    def pick(self, candidates: Sequence["Backend"], client_key: str) -> Optional["Backend"]:
        """Two O(n) passes at most, the second only when there is a tie."""
        count = len(candidates)
        if count == 1:
            return candidates[0]
        first = candidates[0]
        best_index = 0
        best_load = first.active_connections
        best_weight = first.config.weight
        tied = 0  # candidates after best_index with the same ratio as it
        for index in range(1, count):
            backend = candidates[index]
            load = backend.active_connections
            weight = backend.config.weight
            # load / weight < best_load / best_weight, without dividing.
            lhs = load * best_weight
            rhs = best_load * weight
            if lhs < rhs:
                best_index = index
                best_load = load
                best_weight = weight
                tied = 0
            elif lhs == rhs:
                tied += 1
        if not tied:
            return candidates[best_index]
        if tied == count - 1:
            return smooth_pick(self._current, candidates)  # all equal (idle): no list
        tied_backends = [
            backend
            for backend in candidates[best_index:]
            if backend.active_connections * best_weight == best_load * backend.config.weight
        ]
        return smooth_pick(self._current, tied_backends)
