"""The shared-memory stats segment: one fixed-layout slot per worker.

The segment is an ``mmap`` of a file (normally under ``/dev/shm``) viewed as
an array of signed 64-bit integers.  A slot is written only by its worker
and read by the master; no names are stored in it, only numbers at fixed
offsets: the master owns the map from route and backend names to indexes
(:class:`StatsIndex`) and hands it to every worker with the config.

Every field is one aligned 8-byte word, so a reader never sees a torn
value.  Each slot starts with a ``generation`` that the master bumps when it
gives the slot to a new worker (after folding the old worker's counters into
its retired totals), so a reader that sees the generation change while it
copies a slot knows the copy is stale and takes it again.

Slot layout (version 4): the fixed words, then per route (requests by status
class), per backend, per upstream group, then the cache words: the
worker's memory tier (bytes and objects now, evictions so far) followed by
per route cache results (hit, miss, stale, revalidated, bypass) and origin
requests; then, per route, requests refused by edge protection, by reason;
last, per route, compression events (stream, copy made, copy hit).
"""

from __future__ import annotations

import mmap
import os
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from speedproxy.config.model import Config

MAGIC = 0x5350_5354_4154_5331  # "SPSTATS1"
LAYOUT_VERSION = 4
HEADER_WORDS = 16

#: Upper bounds (seconds) of the latency histogram buckets; +Inf is implied.
LATENCY_BUCKETS: Tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

# Fixed words at the start of every slot.
GENERATION = 0
PID = 1
STARTED = 2
REQUESTS = 3
BYTES_IN = 4
BYTES_OUT = 5
ACTIVE_CLIENTS = 6
CLIENTS_TOTAL = 7
LATENCY_SUM_US = 8
ACTIVE_UPSTREAM = 9
STATUS_BASE = 10  # 5 words: 1xx..5xx
HIST_BASE = STATUS_BASE + 5  # len(LATENCY_BUCKETS) + 1 words
FIXED_WORDS = HIST_BASE + len(LATENCY_BUCKETS) + 1

#: Per-route words: requests by status class.
ROUTE_WORDS = 5
# Per-backend words.
B_ACTIVE, B_REQUESTS, B_FAILURES, B_LATENCY_SUM_US, B_RESPONSES, B_DOWN_UNTIL_MS = range(6)
BACKEND_WORDS = 6

# Per-upstream-group words: requests waiting for a backend slot now (gauge),
# 1 while the group is in panic (gauge), requests that waited (counter),
# refused because the queue was full / timed out in it (counters).
U_QUEUE, U_PANIC, U_QUEUED, U_QUEUE_FULL, U_QUEUE_TIMEOUTS = range(5)
UPSTREAM_WORDS = 5

# Cache words of a worker, at the start of the cache region: the memory
# tier's bytes and objects now (gauges) and its evictions so far (counter).
C_MEMORY_BYTES, C_MEMORY_OBJECTS, C_MEMORY_EVICTIONS = range(3)
CACHE_WORDS = 3
#: Per-route cache words: lookups by result (the order of
#: :data:`CACHE_RESULTS`), then requests sent to the origin.
CACHE_RESULTS = ("hit", "miss", "stale", "revalidated", "bypass")
CACHE_HIT, CACHE_MISS, CACHE_STALE, CACHE_REVALIDATED, CACHE_BYPASS = range(5)
RC_ORIGIN = len(CACHE_RESULTS)
ROUTE_CACHE_WORDS = RC_ORIGIN + 1

#: Why edge protection refused a request (``speedproxy_refused_total{route,reason}``),
#: in word order.  A new reason is appended here (and to nothing else): there
#: is room for :data:`REFUSAL_WORDS` reasons per route without a new layout.
REFUSAL_REASONS = ("ip", "cors", "signature", "rate_limit", "session", "connection_limit")
REFUSAL_WORDS = 8
assert len(REFUSAL_REASONS) <= REFUSAL_WORDS
#: Per route, compression events (``speedproxy_compression_total{route,event}``,
#: :data:`speedproxy.edge.compression.EVENTS` in word order), with room to grow.
COMPRESSION_WORDS = 4

#: Gauges are not folded into retired totals when a worker goes away.
GAUGE_WORDS = frozenset({ACTIVE_CLIENTS, ACTIVE_UPSTREAM})


@dataclass
class Layout:
    """Sizes of a segment, fixed when it is created."""

    slots: int
    routes: int
    backends: int
    #: Room for upstream groups (their queue and panic words).
    upstreams: int = 0

    @property
    def route_base(self) -> int:
        return FIXED_WORDS

    @property
    def backend_base(self) -> int:
        return FIXED_WORDS + self.routes * ROUTE_WORDS

    @property
    def upstream_base(self) -> int:
        return self.backend_base + self.backends * BACKEND_WORDS

    @property
    def cache_base(self) -> int:
        """The worker's cache words (:data:`C_MEMORY_BYTES` ...)."""
        return self.upstream_base + self.upstreams * UPSTREAM_WORDS

    @property
    def route_cache_base(self) -> int:
        """Per-route cache words, :data:`ROUTE_CACHE_WORDS` per route."""
        return self.cache_base + CACHE_WORDS

    @property
    def refused_base(self) -> int:
        """Per-route refusal words, :data:`REFUSAL_WORDS` per route (:data:`REFUSAL_REASONS`)."""
        return self.route_cache_base + self.routes * ROUTE_CACHE_WORDS

    @property
    def compression_base(self) -> int:
        """Per-route compression words, :data:`COMPRESSION_WORDS` per route."""
        return self.refused_base + self.routes * REFUSAL_WORDS

    @property
    def slot_words(self) -> int:
        return self.compression_base + self.routes * COMPRESSION_WORDS

    @property
    def total_words(self) -> int:
        return HEADER_WORDS + self.slots * self.slot_words

    def slot_offset(self, slot: int) -> int:
        return HEADER_WORDS + slot * self.slot_words

    def is_gauge(self, word: int) -> bool:
        if word in GAUGE_WORDS:
            return True
        cache = self.cache_base
        if word >= cache:
            return word - cache in (C_MEMORY_BYTES, C_MEMORY_OBJECTS)
        upstreams = self.upstream_base
        if word >= upstreams:
            return (word - upstreams) % UPSTREAM_WORDS in (U_QUEUE, U_PANIC)
        base = self.backend_base
        return word >= base and (word - base) % BACKEND_WORDS in (B_ACTIVE, B_DOWN_UNTIL_MS)


def latency_bucket(seconds: float) -> int:
    """Index of the histogram bucket for one observation (upper bounds inclusive)."""
    return bisect_left(LATENCY_BUCKETS, seconds)


class StatsSegment:
    """An mmap'd stats file, created by the master or attached by a worker."""

    def __init__(self, path: str, layout: Layout, words: memoryview, handle: mmap.mmap) -> None:
        self.path = path
        self.layout = layout
        self.words = words
        self._mmap = handle

    @classmethod
    def create(cls, path: str, layout: Layout) -> "StatsSegment":
        """Create (or truncate) the file and write the header."""
        size = layout.total_words * 8
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            handle = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        words = memoryview(handle).cast("q")
        words[0] = MAGIC
        words[1] = LAYOUT_VERSION
        words[2] = layout.slots
        words[3] = layout.routes
        words[4] = layout.backends
        words[5] = layout.slot_words
        words[6] = layout.upstreams
        return cls(path, layout, words, handle)

    @classmethod
    def attach(cls, path: str) -> "StatsSegment":
        """Map an existing segment, trusting only its header."""
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            handle = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        words = memoryview(handle).cast("q")
        if words[0] != MAGIC or words[1] != LAYOUT_VERSION:
            raise ValueError(f"{path} is not a speedproxy stats segment of layout {LAYOUT_VERSION}")
        layout = Layout(slots=words[2], routes=words[3], backends=words[4], upstreams=words[6])
        if layout.slot_words != words[5] or layout.total_words * 8 > size:
            raise ValueError(f"{path}: inconsistent stats segment header")
        return cls(path, layout, words, handle)

    @classmethod
    def anonymous(cls, layout: Layout) -> "StatsSegment":
        """A private segment for a proxy serving in one process."""
        handle = mmap.mmap(-1, layout.total_words * 8)
        words = memoryview(handle).cast("q")
        words[0] = MAGIC
        words[1] = LAYOUT_VERSION
        return cls("", layout, words, handle)

    def writer(self, slot: int) -> "SlotWriter":
        """The writing side for one worker's slot."""
        return SlotWriter(self, slot)

    def read_slot(self, slot: int) -> List[int]:
        """A consistent copy of one slot (retried if its generation moves)."""
        start = self.layout.slot_offset(slot)
        end = start + self.layout.slot_words
        words = self.words
        for _ in range(100):
            generation = words[start + GENERATION]
            copy = words[start:end].tolist()
            if words[start + GENERATION] == generation:
                return copy
        return copy

    def reset_slot(self, slot: int, pid: int, started: int) -> None:
        """Hand a slot to a new worker: zero it and bump its generation."""
        start = self.layout.slot_offset(slot)
        words = self.words
        generation = words[start + GENERATION] + 1
        words[start + GENERATION] = generation  # readers of the old worker retry
        for index in range(start + 1, start + self.layout.slot_words):
            words[index] = 0
        words[start + PID] = pid
        words[start + STARTED] = started

    def close(self) -> None:
        try:
            self.words.release()
            self._mmap.close()
        except (BufferError, ValueError):
            pass


class SlotWriter:
    """What a worker's data path updates, one word at a time."""

    __slots__ = (
        "words", "base", "route_base", "backend_base", "upstream_base", "hist_base", "status_base",
        "cache_base", "route_cache_base", "refused_base", "compression_base",
    )

    def __init__(self, segment: StatsSegment, slot: int) -> None:
        layout = segment.layout
        self.words = segment.words
        self.base = layout.slot_offset(slot)
        self.route_base = self.base + layout.route_base
        self.backend_base = self.base + layout.backend_base
        self.upstream_base = self.base + layout.upstream_base
        self.hist_base = self.base + HIST_BASE
        self.status_base = self.base + STATUS_BASE
        self.cache_base = self.base + layout.cache_base
        self.route_cache_base = self.base + layout.route_cache_base
        self.refused_base = self.base + layout.refused_base
        self.compression_base = self.base + layout.compression_base

    def add(self, word: int, amount: int = 1) -> None:
        self.words[self.base + word] += amount

    def request_done(
        self, route: int, backend: int, status: int, seconds: float, bytes_out: int, bytes_in: int = 0
    ) -> None:
        """Account for one finished request."""
        words = self.words
        base = self.base
        words[base + REQUESTS] += 1
        words[base + BYTES_OUT] += bytes_out
        if bytes_in:
            words[base + BYTES_IN] += bytes_in
        micros = int(seconds * 1e6)
        words[base + LATENCY_SUM_US] += micros
        cls = status // 100 - 1
        if 0 <= cls < 5:
            words[self.status_base + cls] += 1
            if route >= 0:
                words[self.route_base + route * ROUTE_WORDS + cls] += 1
        words[self.hist_base + bisect_left(LATENCY_BUCKETS, seconds)] += 1
        if backend >= 0:
            backend_word = self.backend_base + backend * BACKEND_WORDS
            words[backend_word + B_RESPONSES] += 1
            words[backend_word + B_LATENCY_SUM_US] += micros

    def cache_result(self, route: int, result: int) -> None:
        """Count one cache lookup of route ``route`` ending in ``result``
        (:data:`CACHE_HIT`, :data:`CACHE_MISS`, :data:`CACHE_STALE`,
        :data:`CACHE_REVALIDATED` or :data:`CACHE_BYPASS`)."""
        if route >= 0 and 0 <= result < RC_ORIGIN:
            self.words[self.route_cache_base + route * ROUTE_CACHE_WORDS + result] += 1

    def origin_request(self, route: int) -> None:
        """Count one request a cached route sent to the origin (miss, revalidation, bypass)."""
        if route >= 0:
            self.words[self.route_cache_base + route * ROUTE_CACHE_WORDS + RC_ORIGIN] += 1

    def refused(self, route: int, reason: int) -> None:
        """Count one request of route ``route`` refused for ``reason`` (an
        index in :data:`REFUSAL_REASONS`)."""
        if route >= 0 and 0 <= reason < REFUSAL_WORDS:
            self.words[self.refused_base + route * REFUSAL_WORDS + reason] += 1

    def compression_event(self, route: int, event: int) -> None:
        """Count one compression ``event`` of route ``route`` (an index in
        :data:`speedproxy.edge.compression.EVENTS`)."""
        if route >= 0 and 0 <= event < COMPRESSION_WORDS:
            self.words[self.compression_base + route * COMPRESSION_WORDS + event] += 1

    def cache_memory(self, size: int, objects: int, evictions: int) -> None:
        """Publish this worker's memory tier: bytes and objects held now,
        evictions since the worker started (a running total, not a delta)."""
        words = self.words
        base = self.cache_base
        words[base + C_MEMORY_BYTES] = size
        words[base + C_MEMORY_OBJECTS] = objects
        words[base + C_MEMORY_EVICTIONS] = evictions

    def backend_word(self, backend: int, word: int) -> int:
        """Absolute index of one per-backend word of this slot."""
        return self.backend_base + backend * BACKEND_WORDS + word

    def upstream_word(self, upstream: int, word: int) -> int:
        """Absolute index of one per-upstream word of this slot."""
        return self.upstream_base + upstream * UPSTREAM_WORDS + word


@dataclass
class StatsIndex:
    """Numeric slots for route and backend names, owned by the master.

    An index is never reused for another name while the segment lives, so a
    removed backend's counters can never be mistaken for a new one's.
    """

    routes: Dict[str, int] = field(default_factory=dict)
    backends: Dict[str, int] = field(default_factory=dict)
    upstreams: Dict[str, int] = field(default_factory=dict)

    @staticmethod
    def backend_key(upstream: str, backend_id: str) -> str:
        return f"{upstream}/{backend_id}"

    def assign(
        self,
        route_names: Sequence[str],
        backend_keys: Sequence[str],
        layout: Optional[Layout],
        upstream_names: Sequence[str] = (),
    ) -> None:
        """Give every new name the next free index.

        Upstream groups only carry gauges (queue length, panic): a group
        beyond the segment's room gets no index and is not exported, rather
        than refusing the config.

        :raises ValueError: when the segment has no room left for a route or
            a backend; the index is then left as it was.
        """
        routes = dict(self.routes)
        backends = dict(self.backends)
        upstreams = dict(self.upstreams)
        for name in route_names:
            if name not in routes:
                routes[name] = len(routes)
        for key in backend_keys:
            if key not in backends:
                backends[key] = len(backends)
        room = layout.upstreams if layout is not None else None
        for name in upstream_names:
            if name not in upstreams and (room is None or len(upstreams) < room):
                upstreams[name] = len(upstreams)
        if layout is not None:
            if len(routes) > layout.routes or len(backends) > layout.backends:
                raise ValueError(
                    "the stats segment has room for %d routes and %d backends; "
                    "restart speedproxy to grow it" % (layout.routes, layout.backends)
                )
        self.routes = routes
        self.backends = backends
        self.upstreams = upstreams

    def assign_config(self, config: "Config", layout: Optional[Layout]) -> None:
        """:meth:`assign` every route and backend of ``config``."""
        self.assign(list(config.routing), backend_keys(config), layout, list(config.backends))

    def to_mapping(self) -> Dict[str, Dict[str, int]]:
        return {"routes": dict(self.routes), "backends": dict(self.backends), "upstreams": dict(self.upstreams)}

    @classmethod
    def from_mapping(cls, data: Mapping[str, Mapping[str, int]]) -> "StatsIndex":
        return cls(
            routes=dict(data.get("routes", {})),
            backends=dict(data.get("backends", {})),
            upstreams=dict(data.get("upstreams", {})),
        )


def backend_keys(config: "Config") -> List[str]:
    """The :meth:`StatsIndex.backend_key` of every backend of ``config``."""
    return [
        StatsIndex.backend_key(upstream, backend.id)
        for upstream, backends in config.backends.items()
        for backend in backends
    ]


def layout_for(slots: int, routes: int, backends: int, upstreams: Optional[int] = None) -> Layout:
    """A layout with room to grow for a config of this size.

    Without ``upstreams`` there is room for as many upstream groups as
    backends (a group without backends is the only way to need more).
    """
    room = max(256, 4 * backends)
    return Layout(
        slots=slots,
        routes=max(64, 4 * routes),
        backends=room,
        upstreams=room if upstreams is None else max(256, 4 * upstreams),
    )
