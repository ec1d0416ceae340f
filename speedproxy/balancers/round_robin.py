"""``round_robin``: each available backend in turn, ignoring weight."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from zope.interface import implementer

from speedproxy.balancers.interface import IBalancer

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.upstreams import Backend


@implementer(IBalancer)
class RoundRobinBalancer:
    """Cycle through the candidates in membership order."""

    def __init__(self) -> None:
        self._next = 0

    def update(self, backends: Sequence["Backend"]) -> None:
        self._next = 0

    def pick(self, candidates: Sequence["Backend"], client_key: str) -> Optional["Backend"]:
        index = self._next % len(candidates)
        self._next = index + 1
        return candidates[index]
