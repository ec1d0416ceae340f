"""Fetching segments into the cache before players ask for them.

Each prefetch is an internal request (:func:`speedproxy.cache.fetch.fetch`)
through the route's whole data path, so it is coalesced with players'
requests for the same segment by the cache (one origin request, in this
worker or across the host's workers), stored like any response, and counted
and logged like one.  It carries ``X-Speedproxy-Prefetch: 1``: the HLS
filter never prefetches for such a request (here or in a speedproxy
behind this one), so prefetch is never recursive and a chain of proxies
does not prefetch in a loop.

Per route and worker at most ``max_prefetch_downloads`` are under way;
further wishes are dropped (counted), not queued: the viewer's next
segment request asks again for what is still missing.  :meth:`Prefetcher.watch`
tells when prefetches under way are over (a held live playlist waits for
its new segments, :mod:`speedproxy.hls.live`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from twisted.logger import Logger

from speedproxy.cache import policy
from speedproxy.cache.entry import CachedObject

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.cache.filter import CacheFilter
    from speedproxy.proxy.core import ProxyCore

log = Logger(namespace="speedproxy.hls")

#: The request header marking a prefetch (never prefetched for in turn).
PREFETCH_HEADER = b"X-Speedproxy-Prefetch"
PREFETCH_HEADER_LOWER = PREFETCH_HEADER.lower()

#: A target prefetched successfully is not looked at again for this long.
RECHECK = 30.0
#: Targets remembered as prefetched.
MAX_RECENT = 20_000

#: Counter names (``speedproxy_hls_prefetch_total{result}`` to be).
RESULTS = ("started", "ok", "failed", "cached", "coalesced", "dropped")


class Prefetcher:
    """The prefetches of one route in one worker."""

    def __init__(self, core: "ProxyCore") -> None:
        self.core = core
        self.in_flight: Set[str] = set()
        self._recent: "OrderedDict[str, float]" = OrderedDict()
        self.counters: Dict[str, int] = dict.fromkeys(RESULTS, 0)
        #: Target -> what to call when its prefetch is over.
        self._watchers: Dict[str, List[Callable[[str], None]]] = {}

    def prefetch(
        self,
        cache: "CacheFilter",
        host: bytes,
        scheme: bytes,
        targets: Iterable[str],
        headers: Sequence[Tuple[bytes, bytes]],
        limit: int,
    ) -> List[str]:
        """Fetch each target not stored, not on its way and within ``limit``; the ones started."""
        core = self.core
        counters = self.counters
        now = core.clock.seconds()
        started: List[str] = []
        names = [name.lower() for name, _ in headers]
        for target in targets:
            if target in self.in_flight:
                counters["coalesced"] += 1
                continue
            seen = self._recent.get(target)
            if seen is not None and now - seen < RECHECK:
                counters["cached"] += 1
                continue
            raw = target.encode("latin-1")
            path, mark, query = raw.partition(b"?")
            key = cache.key_of(host, path, mark + query, scheme, headers, names)
            if self._stored(key, now):
                counters["cached"] += 1
                self._remember(target, now)
                continue
            if key in core.cache_fills:
                counters["coalesced"] += 1  # a player's request is fetching it
                continue
            if len(self.in_flight) >= limit:
                counters["dropped"] += 1
                continue
            self._start(host, scheme, target, raw, headers)
            started.append(target)
        return started

    def watch(self, targets: Iterable[str], callback: Callable[[str], None]) -> Set[str]:
        """Call ``callback(target)`` when the prefetch of each of ``targets``
        under way is over (stored or not); the targets watched."""
        watched = set()
        for target in targets:
            if target in self.in_flight:
                self._watchers.setdefault(target, []).append(callback)
                watched.add(target)
        return watched

    def _over(self, target: str) -> None:
        self.in_flight.discard(target)
        for callback in self._watchers.pop(target, ()):
            try:
                callback(target)
            except Exception:
                log.failure("hls: a prefetch watcher failed")

    def _stored(self, key: bytes, now: float) -> bool:
        """Is a fresh response for ``key`` in this worker's memory tier?"""
        tiers = self.core.cache
        if tiers is None:
            return False
        entry = tiers.memory.peek(key)
        if not isinstance(entry, CachedObject):
            return False
        outcome, _ = policy.evaluate(entry.policy, policy.NO_DIRECTIVES, now)
        return outcome == policy.FRESH

    def _remember(self, target: str, now: float) -> None:
        recent = self._recent
        recent[target] = now
        recent.move_to_end(target)
        while len(recent) > MAX_RECENT:
            recent.popitem(last=False)

    def _start(self, host: bytes, scheme: bytes, target: str, raw: bytes, headers: Sequence[Tuple[bytes, bytes]]) -> None:
        from speedproxy.cache.fetch import fetch

        self.in_flight.add(target)
        self.counters["started"] += 1

        def done(status: Optional[int]) -> None:
            if status is not None and 200 <= status < 300:
                self.counters["ok"] += 1
                self._remember(target, self.core.clock.seconds())
            else:
                self.counters["failed"] += 1
            self._over(target)

        def failed(failure: Any) -> None:
            self.counters["failed"] += 1
            log.failure("hls: prefetch of {target} failed", failure, target=target)
            self._over(target)

        request_headers = list(headers) + [(PREFETCH_HEADER, b"1")]
        try:
            fetch(self.core, host, raw, request_headers, scheme=scheme).addCallbacks(done, failed)
        except Exception:
            self.counters["failed"] += 1
            log.failure("hls: prefetch of {target} failed", target=target)
            self._over(target)

    def info(self) -> Dict[str, Any]:
        figures: Dict[str, Any] = dict(self.counters)
        figures["in_flight"] = len(self.in_flight)
        return figures
