"""``weight``: smooth weighted round robin, exactly as nginx does it.

On every pick each candidate's *current weight* grows by its configured
weight, the candidate with the largest current weight wins (the first one in
membership order on a tie) and the winner's current weight drops by the sum
of the candidates' weights.  Over ``sum(weights)`` consecutive picks every
backend is chosen exactly ``weight`` times, and the picks are spread out
rather than bursty: weights 5:1:1 give ``a a b a c a a``.

Backends that are not among the candidates (down, draining, full) simply do
not take part in that pick; their current weight is kept as it was, as in
nginx.  :meth:`WeightBalancer.update` resets all current weights to zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Sequence

from zope.interface import implementer

from speedproxy.balancers.interface import IBalancer

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.upstreams import Backend


@implementer(IBalancer)
class WeightBalancer:
    """Smooth weighted round robin over the candidates' configured weights."""

    def __init__(self) -> None:
        #: Current (smooth) weight per backend, keyed by backend identity.
        self._current: Dict["Backend", int] = {}

    def update(self, backends: Sequence["Backend"]) -> None:
        """Forget all smoothing state: every backend starts from zero again."""
        self._current = {backend: 0 for backend in backends}

    def pick(self, candidates: Sequence["Backend"], client_key: str) -> Optional["Backend"]:
        """Choose the candidate with the largest current weight (O(n), no allocation)."""
        if len(candidates) == 1:
            # Adding and then subtracting the only weight leaves state as is.
            return candidates[0]
        current = self._current
        total = 0
        best = candidates[0]
        best_weight = None
        for backend in candidates:
            weight = backend.config.weight
            value = current.get(backend, 0) + weight
            current[backend] = value
            total += weight
            if best_weight is None or value > best_weight:
                best = backend
                best_weight = value
        current[best] = best_weight - total  # type: ignore[operator]
        return best
