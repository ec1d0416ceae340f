"""The memory tier: one per worker, bounded by bytes, recency and frequency.

Objects live in a segmented LRU (as Caffeine's and memcached's "warm/hot"
queues): a new object enters the *probation* segment; one read again while
there moves to the *protected* segment (80% of the bytes), whose least
recently used objects fall back to probation when it is full.  Eviction
takes the least recently used object of probation first, so a burst of
one-time objects (a crawler, a scan) cannot push out what is read often,
the access-frequency cleaning the HTTP Cache Server describes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Generic, Hashable, Iterator, List, Optional, Tuple, TypeVar

Value = TypeVar("Value")

#: Share of the bytes given to objects read more than once.
PROTECTED_SHARE = 0.8
#: Probation objects whose popularity is compared at an eviction (with ``heat``).
HEAT_SAMPLE = 8


class MemoryTier(Generic[Value]):
    """A bytes-bounded map from keys to values with a size each."""

    def __init__(self, max_bytes: int, on_evict: Optional[Callable[[Hashable, Value], None]] = None) -> None:
        self.max_bytes = max_bytes
        self._probation: "OrderedDict[Hashable, Tuple[Value, int]]" = OrderedDict()
        self._protected: "OrderedDict[Hashable, Tuple[Value, int]]" = OrderedDict()
        self._protected_bytes = 0
        self.bytes = 0
        self.evictions = 0
        self._on_evict = on_evict

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._protected or key in self._probation

    def get(self, key: Hashable) -> Optional[Value]:
        """The value for ``key`` (counting as a use), or ``None``."""
        protected = self._protected
        item = protected.get(key)
        if item is not None:
            protected.move_to_end(key)
            return item[0]
        item = self._probation.pop(key, None)
        if item is None:
            return None
        # A second use: promote, demoting protected objects over its share.
        protected[key] = item
        self._protected_bytes += item[1]
        limit = self.max_bytes * PROTECTED_SHARE
        while self._protected_bytes > limit and len(protected) > 1:
            old_key, old = protected.popitem(last=False)
            self._protected_bytes -= old[1]
            self._probation[old_key] = old
        return item[0]

    def peek(self, key: Hashable) -> Optional[Value]:
        """The value for ``key`` without counting a use."""
        item = self._protected.get(key) or self._probation.get(key)
        return item[0] if item is not None else None

    def put(self, key: Hashable, value: Value, size: int) -> bool:
        """Store ``value``; False when it is larger than the whole tier."""
        if size > self.max_bytes:
            self.remove(key)
            return False
        self.remove(key)
        self._probation[key] = (value, size)
        self.bytes += size
        self._evict()
        return True

    def remove(self, key: Hashable) -> Optional[Value]:
        """Drop ``key``; return its value, if it was there."""
        item = self._protected.pop(key, None)
        if item is not None:
            self._protected_bytes -= item[1]
        else:
            item = self._probation.pop(key, None)
            if item is None:
                return None
        self.bytes -= item[1]
        return item[0]

    #: Optional popularity of a key (:mod:`speedproxy.hls.heat`): when set,
    #: probation evicts the coldest of its :data:`HEAT_SAMPLE` least
    #: recently used objects instead of the least recently used one.
    heat: Optional[Callable[[Hashable], float]] = None

    def _evict(self) -> None:
        while self.bytes > self.max_bytes:
            segment = self._probation if self._probation else self._protected
            if self.heat is not None and segment is self._probation and len(segment) > 1:
                key = self._coldest()
                value, size = segment.pop(key)
            else:
                key, (value, size) = segment.popitem(last=False)
            if segment is self._protected:
                self._protected_bytes -= size
            self.bytes -= size
            self.evictions += 1
            if self._on_evict is not None:
                self._on_evict(key, value)

    def _coldest(self) -> Hashable:
        """The probation key to evict: the least popular of the oldest few (the first on a tie)."""
        heat = self.heat
        assert heat is not None
        coldest, lowest = None, 0.0
        for index, key in enumerate(self._probation):
            if index == HEAT_SAMPLE:
                break
            score = heat(key)
            if coldest is None or score < lowest:
                coldest, lowest = key, score
                if score <= 0.0:
                    break  # nothing is colder than never asked for
        return coldest

    def keys(self) -> Iterator[Hashable]:
        """Every key, most valuable last (no use is counted)."""
        yield from list(self._probation)
        yield from list(self._protected)

    def remove_where(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every key ``predicate`` accepts; return how many."""
        doomed: List[Hashable] = [key for key in self.keys() if predicate(key)]
        for key in doomed:
            self.remove(key)
        return len(doomed)

    def clear(self) -> int:
        count = len(self)
        self._probation.clear()
        self._protected.clear()
        self._protected_bytes = 0
        self.bytes = 0
        return count

    def resize(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._evict()


class UseCounter:
    """Approximate request counts per key, for ``min_uses`` admission.

    A bounded dict that halves every count when it fills up (the
    "doorkeeper" aging of TinyLFU), so memory stays bounded and old
    popularity fades.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._counts: Dict[Hashable, int] = {}

    def add(self, key: Hashable) -> int:
        """Count one more request for ``key``; return its count."""
        counts = self._counts
        count = counts.get(key, 0) + 1
        counts[key] = count
        if len(counts) > self.capacity:
            self._counts = {k: c // 2 for k, c in counts.items() if c > 1}
        return count
