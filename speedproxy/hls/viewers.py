"""Access patterns: is a viewer watching sequentially (prefetch) or seeking (not)?

A viewer is a client (address and ``User-Agent``) watching one group of
renditions of a stream (the variants of a master playlist, or one audio
group...).  Each segment request is compared with the viewer's previous one:

- the next sequence number, in the same rendition or another one of the
  group (a rendition switch), or the same number in another rendition (a
  player that switches re-asks the position it is at): **sequential**, the
  segments after it are worth fetching now;
- anything else (the first request, a jump, a repeat): a **seek**: nothing
  is prefetched until the viewer settles, i.e. makes its next sequential
  request.

Viewers idle for longer than ``idle`` seconds are forgotten (and start
over as new ones).  State is per worker, bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Tuple


class ViewerTracker:
    """The last segment each viewer asked for."""

    def __init__(self, idle: float = 60.0, max_viewers: int = 100_000) -> None:
        self.idle = idle
        self.max_viewers = max_viewers
        #: viewer -> (rendition, sequence, time).
        self._last: "OrderedDict[Hashable, Tuple[Any, int, float]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def saw(self, viewer: Hashable, rendition: Any, sequence: int, now: float) -> bool:
        """Record a segment request; True when it continues the viewer's previous one."""
        last = self._last
        previous = last.get(viewer)
        last[viewer] = (rendition, sequence, now)
        last.move_to_end(viewer)
        if previous is None:
            while len(last) > self.max_viewers:
                last.popitem(last=False)
            return False
        was_rendition, was_sequence, was_time = previous
        if now - was_time > self.idle:
            return False
        if sequence == was_sequence + 1:
            return True
        return sequence == was_sequence and rendition is not was_rendition

    def active(self, now: float) -> int:
        """Viewers seen within ``idle`` seconds (forgetting the others)."""
        last = self._last
        while last:
            viewer, (_, _, seen) = next(iter(last.items()))
            if now - seen <= self.idle:
                break
            last.popitem(last=False)
        return len(last)
