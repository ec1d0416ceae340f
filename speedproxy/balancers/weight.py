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

from typing import TYPE_CHECKING, Callable, Dict, Iterable, Optional, Sequence, Union

from zope.interface import implementer

from speedproxy.balancers.interface import IBalancer

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.upstreams import Backend


def smooth_pick(
    current: Dict["Backend", Union[int, float]],
    candidates: Iterable["Backend"],
    weight_of: Optional[Callable[["Backend"], float]] = None,
) -> "Backend":
    """One step of smooth weighted round robin over ``candidates`` (non-empty).

    ``current`` holds the smooth weights and is updated in place; a
    backend's weight is its configured one unless ``weight_of`` says
    otherwise.  Shared by every balancer that spreads by weight.
    """
    total: Union[int, float] = 0
    best: Optional["Backend"] = None
    best_value: Union[int, float] = 0
    for backend in candidates:
        weight = backend.config.weight if weight_of is None else weight_of(backend)
        value = current.get(backend, 0) + weight
        current[backend] = value
        total += weight
        if best is None or value > best_value:
            best = backend
            best_value = value
    current[best] = best_value - total  # type: ignore[index]
    return best  # type: ignore[return-value]


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
        return smooth_pick(self._current, candidates)
