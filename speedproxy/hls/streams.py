"""Per-stream figures of one route in one worker (``/api/v1/hls/streams``).

A *stream* is a master playlist (its path), or a media playlist no master
playlist this worker read lists.  Every request of a player for the
stream's playlists and segments is accounted at its end
(:meth:`StreamFigures.finished`): viewers (client address and
``User-Agent``), renditions, bytes served, requests answered without an
origin request of their own (cache hit ratio), bytes fetched from the
origin (players' misses and prefetches), and the throughput delivered over
the last :data:`WINDOW` seconds.  Streams nobody asked for in ``forget``
seconds are dropped.  Each worker reports its own; the master sums them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, Hashable, List, Optional

#: Seconds over which the delivered throughput is measured.
WINDOW = 10
#: Streams kept per route and worker.
MAX_STREAMS = 10_000
#: Viewers kept per stream.
MAX_VIEWERS = 100_000


class Stream:
    """What one worker saw of one stream."""

    __slots__ = ("name", "viewers", "renditions", "served_bytes", "origin_bytes", "hits", "misses",
                 "requests", "last", "buckets")

    def __init__(self, name: str) -> None:
        self.name = name
        #: viewer -> last seen.
        self.viewers: "OrderedDict[Hashable, float]" = OrderedDict()
        #: rendition path -> last seen.
        self.renditions: Dict[str, float] = {}
        self.served_bytes = 0
        self.origin_bytes = 0
        self.hits = 0
        self.misses = 0
        self.requests = 0
        self.last = 0.0
        #: [second, bytes served in it] for the last WINDOW seconds.
        self.buckets: List[List[int]] = []

    def served(self, now: float, size: int) -> None:
        second = int(now)
        buckets = self.buckets
        if buckets and buckets[-1][0] == second:
            buckets[-1][1] += size
        else:
            buckets.append([second, size])
            while buckets and buckets[0][0] <= second - WINDOW:
                del buckets[0]

    def throughput(self, now: float) -> float:
        """Bytes/s delivered over the last :data:`WINDOW` seconds."""
        start = int(now) - WINDOW
        return sum(size for second, size in self.buckets if second > start) / float(WINDOW)

    def info(self, now: float, idle: float) -> Dict[str, Any]:
        viewers = self.viewers
        while viewers:
            viewer, seen = next(iter(viewers.items()))
            if now - seen <= idle:
                break
            viewers.popitem(last=False)
        return {
            "viewers": len(viewers),
            "renditions": sorted(path for path, seen in self.renditions.items() if now - seen <= idle),
            "requests": self.requests,
            "hits": self.hits,
            "misses": self.misses,
            "served_bytes": self.served_bytes,
            "origin_bytes": self.origin_bytes,
            "throughput_bytes_per_second": round(self.throughput(now), 1),
            "last_seen": round(self.last, 3),
        }


class StreamFigures:
    """The streams of one route in one worker."""

    def __init__(self, idle: float = 60.0, forget: float = 300.0) -> None:
        self.idle = idle
        self.forget = forget
        self.streams: "OrderedDict[str, Stream]" = OrderedDict()
        #: Route totals (exported as counters: never go down).
        self.served_bytes = 0
        self.origin_bytes = 0

    def finished(
        self,
        now: float,
        name: str,
        rendition: Optional[str],
        viewer: Optional[Hashable],
        served: int,
        origin: int,
        hit: Optional[bool],
    ) -> None:
        """Account one request of stream ``name``: ``served`` bytes to a player
        (0 for the proxy's own), ``origin`` bytes fetched from the origin,
        ``hit``: answered without an origin request (``None``: not a player's)."""
        streams = self.streams
        stream = streams.get(name)
        if stream is None:
            stream = streams[name] = Stream(name)
            while len(streams) > MAX_STREAMS:
                streams.popitem(last=False)
        else:
            streams.move_to_end(name)
        stream.last = now
        self.origin_bytes += origin
        stream.origin_bytes += origin
        if viewer is None:
            return
        self.served_bytes += served
        stream.served_bytes += served
        stream.requests += 1
        if hit:
            stream.hits += 1
        else:
            stream.misses += 1
        if served:
            stream.served(now, served)
        stream.viewers[viewer] = now
        stream.viewers.move_to_end(viewer)
        while len(stream.viewers) > MAX_VIEWERS:
            stream.viewers.popitem(last=False)
        if rendition is not None:
            stream.renditions[rendition] = now

    def viewers(self, now: float) -> int:
        """Viewers of every stream watched within ``idle`` (a player watching
        two streams counts twice)."""
        self._forget(now)
        return sum(stream.info(now, self.idle)["viewers"] for stream in self.streams.values())

    def _forget(self, now: float) -> None:
        streams = self.streams
        while streams:
            name, stream = next(iter(streams.items()))
            if now - stream.last <= self.forget:
                break
            streams.popitem(last=False)

    def info(self, now: float) -> Dict[str, Dict[str, Any]]:
        """Per stream watched within ``forget`` seconds."""
        self._forget(now)
        return {name: stream.info(now, self.idle) for name, stream in self.streams.items()}
