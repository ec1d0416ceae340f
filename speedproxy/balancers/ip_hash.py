"""``ip_hash``: consistent hashing of the client address onto a ring.

Every backend of the membership owns a number of *virtual nodes* on a 64-bit
ring, at ``hash(f"{backend_id}#{i}")``; a client key is hashed onto the same
ring and served by the first virtual node clockwise whose backend is a
candidate.  Hashes are BLAKE2b (8-byte digest), so the mapping is the same in
every worker process and across restarts (Python's ``hash()`` is salted per
process and must never be used here).

Properties:

* the same key goes to the same backend while membership is unchanged;
* removing one of N backends from the membership remaps only the keys it
  served; adding one moves about ``1/(N+1)`` of the keys, all to the newcomer;
* a backend that is merely unavailable (not among the candidates) only has its
  own keys served elsewhere, and gets them back when it returns.

Virtual nodes per backend: ``round(160 * weight / reference)``, at least 1 and
at most :data:`MAX_VNODES`, where ``reference = min(100, largest weight in the
membership)``.  With the default weight of 100 that is 160 nodes each; groups
that use small nginx-style weights (1..10) still get 160 nodes for their
heaviest backend instead of one or two.  The count of a backend depends only
on its own weight and the reference, so adding or removing a backend leaves
the other backends' nodes where they are (unless it changes the reference,
i.e. it carries the group's largest weight and that weight is below 100).
"""

from __future__ import annotations

from bisect import bisect_left
from hashlib import blake2b
from typing import TYPE_CHECKING, List, Optional, Sequence

from zope.interface import implementer

from speedproxy.balancers.interface import IBalancer

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.upstreams import Backend

#: Virtual nodes for a backend whose weight equals the reference weight.
VNODES = 160
#: Weight that earns :data:`VNODES` virtual nodes (lowered to the group's
#: largest weight when all weights are smaller).
REFERENCE_WEIGHT = 100
#: Upper bound of virtual nodes per backend, whatever its weight.
MAX_VNODES = 160 * 64


def ring_hash(value: str) -> int:
    """Stable 64-bit hash of ``value``, identical in every process."""
    return int.from_bytes(blake2b(value.encode("utf-8"), digest_size=8).digest(), "big")


def vnode_count(weight: int, reference: int) -> int:
    """Number of virtual nodes for ``weight`` given the group's ``reference``."""
    if weight <= 0:
        return 0
    return max(1, min(MAX_VNODES, round(VNODES * weight / reference)))


@implementer(IBalancer)
class IpHashBalancer:
    """Consistent hashing ring with weighted virtual nodes."""

    def __init__(self) -> None:
        #: Sorted ring positions, and the owner of each position (parallel).
        self._points: List[int] = []
        self._owners: List["Backend"] = []
        self._owner_ids: List[str] = []
        #: Size of the membership the ring was built from.
        self._size = 0

    def update(self, backends: Sequence["Backend"]) -> None:
        """Rebuild the ring from the full membership (available or not)."""
        weights = [backend.config.weight for backend in backends if backend.config.weight > 0]
        reference = min(REFERENCE_WEIGHT, max(weights)) if weights else REFERENCE_WEIGHT
        nodes = []
        for backend in backends:
            backend_id = backend.config.id
            for i in range(vnode_count(backend.config.weight, reference)):
                nodes.append((ring_hash(f"{backend_id}#{i}"), backend_id, backend))
        # Sort on (position, id) only: deterministic whatever the order of the
        # membership, and Backend objects are never compared.
        nodes.sort(key=lambda node: (node[0], node[1]))
        self._points = [node[0] for node in nodes]
        self._owner_ids = [node[1] for node in nodes]
        self._owners = [node[2] for node in nodes]
        self._size = len(backends)

    def pick(self, candidates: Sequence["Backend"], client_key: str) -> Optional["Backend"]:
        """Hash ``client_key`` and walk the ring clockwise to a candidate.

        O(log n) when every member is a candidate; otherwise the walk passes
        over the unavailable backends' nodes (a few steps on average).
        """
        points = self._points
        if not points:
            # update() was never called (or gave nothing to hash): use the
            # candidates as the membership.
            self.update(candidates)
            points = self._points
            if not points:
                return candidates[0]
        key_hash = ring_hash(client_key)
        ring_size = len(points)
        index = bisect_left(points, key_hash)
        if index == ring_size:
            index = 0
        if len(candidates) == self._size:
            return self._owners[index]
        wanted = {backend.config.id: backend for backend in candidates}
        owner_ids = self._owner_ids
        for _ in range(ring_size):
            found = wanted.get(owner_ids[index])
            if found is not None:
                return found
            index += 1
            if index == ring_size:
                index = 0
        # No candidate is on the ring (membership out of date): still stable.
        return candidates[key_hash % len(candidates)]
