"""Hot content: a decaying popularity score per cached object (the seed's "dynamic heat").

Each time a player asks for a segment its score becomes
``score * 2 ** (-elapsed / half_life) + 1``: recent demand counts fully,
demand a few half-lives old hardly at all.  The worker's memory tier
(:class:`speedproxy.cache.memory.MemoryTier`, ``heat`` hook) then evicts,
of the oldest few objects on probation, the one with the lowest score
rather than simply the oldest: a segment many players are watching right
now stays in memory, while segments fetched ahead that nobody asked for
(prefetches do not heat), one-off requests and the tail of a stream that
everyone has left go first.  One :class:`Heat` per worker, put on the
memory tier by the first HLS route; routes without HLS leave the tier as
it was (no hook, no cost).

Bounded: at :attr:`Heat.capacity` keys the coldest half is forgotten.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Tuple

#: Seconds after which a request counts half: a few segments' worth.
HALF_LIFE = 30.0


class Heat:
    """Decaying popularity scores, keyed like the cache."""

    def __init__(self, clock: Any, half_life: float = HALF_LIFE, capacity: int = 200_000) -> None:
        self.clock = clock
        self.half_life = half_life
        self.capacity = capacity
        self._scores: Dict[Hashable, Tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._scores)

    def _decayed(self, score: float, stamp: float, now: float) -> float:
        if now <= stamp:
            return score
        return score * 2.0 ** (-(now - stamp) / self.half_life)

    def touch(self, key: Hashable) -> float:
        """A player asked for ``key``: its new score."""
        now = self.clock.seconds()
        scores = self._scores
        found = scores.get(key)
        score = 1.0 if found is None else self._decayed(found[0], found[1], now) + 1.0
        scores[key] = (score, now)
        if len(scores) > self.capacity:
            self._forget(now)
        return score

    def score(self, key: Hashable) -> float:
        """``key``'s popularity now (0: never asked for, or forgotten)."""
        found = self._scores.get(key)
        if found is None:
            return 0.0
        return self._decayed(found[0], found[1], self.clock.seconds())

    def _forget(self, now: float) -> None:
        ranked = sorted(self._scores.items(), key=lambda item: self._decayed(item[1][0], item[1][1], now))
        self._scores = dict(ranked[len(ranked) // 2 :])


def heat_of(core: Any) -> Heat:
    """The worker's :class:`Heat`, made and put on its memory tier on first use."""
    heat = getattr(core, "hls_heat", None)
    if heat is None:
        heat = core.hls_heat = Heat(core.clock)
    tiers = getattr(core, "cache", None)
    if tiers is not None and tiers.memory.heat is None:
        tiers.memory.heat = heat.score
    return heat
