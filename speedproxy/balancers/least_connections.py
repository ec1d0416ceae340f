"""``least_connections``: the candidate with the fewest requests in flight.

Weights are ignored (see ``least_connections_weight`` for the weighted
variant).  Ties are broken round robin: the scan starts just after the last
chosen position, so equally loaded backends take turns instead of the first
one always winning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from zope.interface import implementer

from speedproxy.balancers.interface import IBalancer

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.upstreams import Backend


@implementer(IBalancer)
class LeastConnectionsBalancer:
    """Fewest ``active_connections`` wins; ties rotate."""

    def __init__(self) -> None:
        self._next = 0

    def update(self, backends: Sequence["Backend"]) -> None:
        """Restart the tie-breaking rotation."""
        self._next = 0

    def pick(self, candidates: Sequence["Backend"], client_key: str) -> Optional["Backend"]:
        """One O(n) scan starting at the rotation point; stops early at zero load."""
        count = len(candidates)
        start = self._next
        if start >= count:
            start = 0
        best_index = start
        best_load = candidates[start].active_connections
        if best_load > 0:
            index = start
            for _ in range(count - 1):
                index += 1
                if index == count:
                    index = 0
                load = candidates[index].active_connections
                if load < best_load:
                    best_index = index
                    best_load = load
                    if load <= 0:
                        break
        self._next = best_index + 1
        return candidates[best_index]
