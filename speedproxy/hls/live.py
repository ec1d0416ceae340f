"""The live edge: a refreshed live playlist reaches players after its new segments.

A live player learns of a new segment from a playlist reload and asks for
it at once.  If the edge refreshed the playlist for that very reload and
only then started prefetching the new segments, the first players ask
while the prefetch is under way and join it (``Cache-Status: ...;
collapsed``, not a hit): prefetch could never work ahead of them on a live
stream.  So, on a route with prefetch, a worker refreshes a stale live
media playlist on its own and **holds the players' requests for it** until
the new segments that refresh lists are stored:

1. A player asks for a live playlist (one the worker knows as live, listed
   in its memory tier, stale, no refresh of it under way): the worker
   starts a :class:`Hold` for its cache key, refreshes it with an internal
   request through the route's data path (so it is coalesced with the
   host's other workers through the disk tier, as any refresh), and the
   player waits.  Players asking for it meanwhile wait too.
2. The refreshed playlist is learnt (:meth:`LiveHolds.learned`): the newest
   ``prefetch_depth`` segments it lists that the previous one did not are
   prefetched (``X-Speedproxy-Prefetch: 1``) at once.
3. The players go on to the cache (which now has the new playlist, a hit)
   when those prefetches are over, or when the hold's bound passes, or at
   once when the refresh brought nothing new or failed (then the cache
   does what it always does with a stale playlist).

The bound (:func:`hold_bound`) is :data:`HOLD_SHARE` of the target
duration, never more than the playlist's reload interval (its cache
lifetime): a segment slower than that to arrive is not worth a longer
wait, and a player is never held past the moment it would have reloaded
anyway.  A refresh that never ends is cut by :attr:`Hold.deadline` (the
upstream timeouts plus the bound).

Why hold rather than serve the previous playlist until the segments are
stored: players already wait for the refresh of a stale live playlist (the
cache collapses them onto one origin request), so holding adds only the
new segments' fetch (milliseconds from a near origin, bounded by a
fraction of a target duration) to a wait they have anyway, and the
players get the new playlist from that same reload.  Serving the previous
playlist would cost each player that reloads at that moment a whole
reload interval behind the live edge (players reload after a target
duration, or half of one when nothing changed, RFC 8216 6.3.4), and
answer a stale playlist past its lifetime.

Only live and EVENT media playlists, only on routes that prefetch
(``prefetch_depth`` and ``max_prefetch_downloads`` above 0), only players'
GET requests (not internal ones, not ones marked as prefetches, not
ranges): VOD playlists and routes without prefetch take the cache's path
as before.  Holds are per worker and per key, as the players they hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set

from twisted.internet.defer import Deferred
from twisted.logger import Logger

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.interfaces import IDelayedCall

    from speedproxy.proxy.exchange import Exchange

log = Logger(namespace="speedproxy.hls")

#: The share of a live playlist's target duration players may be held for
#: its new segments.
HOLD_SHARE = 0.25

#: Why holds ended (counters in ``/cache/info``: ``hls.<route>.live_hold``).
REASONS = ("stored", "bound", "nothing_new", "failed", "deadline")


def hold_bound(target_duration: float, reload_interval: Optional[float]) -> float:
    """How long players may wait for the new segments of a refreshed live
    playlist: :data:`HOLD_SHARE` of ``target_duration``, at most
    ``reload_interval`` (the playlist's lifetime; ``None``: not known)."""
    bound = HOLD_SHARE * target_duration
    if reload_interval is not None and reload_interval > 0:
        bound = min(bound, reload_interval)
    return max(bound, 0.0)


class Hold:
    """One refresh of a live playlist in one worker, and the players waiting for it."""

    def __init__(self, holds: "LiveHolds", key: bytes, path: str, bound: float, deadline: float) -> None:
        self.holds = holds
        self.key = key
        self.path = path
        self.bound = bound
        self.waiters: List[Any] = []
        #: The refresh is over (its status), the playlist is learnt.
        self.fetched = False
        self.learnt = False
        #: New segments being prefetched (waited for).
        self.pending: Set[str] = set()
        #: Prefetch of the new segments asked for, not started yet (next turn).
        self.starting = False
        #: New segments were found to prefetch.
        self.prefetching = False
        self.released = False
        #: What the filter needs to prefetch for it (host, scheme, request fields).
        self.context: Any = None
        reactor = holds.reactor
        self._deadline: Optional["IDelayedCall"] = reactor.callLater(deadline, self.release, "deadline")
        self._bound: Optional["IDelayedCall"] = None

    def wait(self, exchange: "Exchange") -> "Deferred[None]":
        """A player's request waits for the hold; fires with ``None`` (go on to the cache)."""
        waiting: "Deferred[None]" = Deferred()
        self.waiters.append((exchange, waiting))
        self.holds.counters["players_held"] += 1
        return waiting

    def _start_bound(self) -> None:
        if self._bound is None and not self.released:
            self._bound = self.holds.reactor.callLater(self.bound, self.release, "bound")

    # -- events ------------------------------------------------------------------------

    def refreshed(self, status: Optional[int], parsing: bool = False) -> None:
        """The internal refresh is over (``status``: what it was answered,
        ``None``: it failed; ``parsing``: its playlist is being parsed in a thread)."""
        self.fetched = True
        if status != 200:
            self.release("failed")
        elif self.learnt:
            self._maybe_release()
        elif parsing:
            self._start_bound()  # a large playlist: learnt when its parse is done
        else:
            self.learnt = True  # the version the worker knew already: nothing new
            self.release("nothing_new")

    def learned(self, fresh: List[str], depth: int) -> List[str]:
        """The refreshed playlist is learnt, listing ``fresh`` new segments:
        the newest ``depth`` are the ones to prefetch now (the caller starts
        them, then calls :meth:`watch`)."""
        self.learnt = True
        targets = fresh[-depth:] if fresh and depth > 0 else []
        if not targets:
            if self.fetched:
                self.release("nothing_new")
            return []
        self.starting = self.prefetching = True
        self._start_bound()
        return targets

    def watch(self, pending: Set[str]) -> None:
        """The prefetches of the new segments started; ``pending``: those under way."""
        self.starting = False
        self.pending = set(pending)
        self._maybe_release()

    def segment_done(self, target: str) -> None:
        self.pending.discard(target)
        self._maybe_release()

    def _maybe_release(self) -> None:
        if self.fetched and self.learnt and not self.starting and not self.pending:
            self.release("stored" if self.prefetching else "nothing_new")

    def release(self, reason: str) -> None:
        """Let the players go on to the cache."""
        if self.released:
            return
        self.released = True
        for call in (self._deadline, self._bound):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._bound = None
        self.holds.forget(self)
        self.holds.counters[reason] += 1
        waiters, self.waiters = self.waiters, []
        for exchange, waiting in waiters:
            if not exchange.finished:  # (a player gone meanwhile is not resumed)
                waiting.callback(None)


class LiveHolds:
    """The holds of one route in one worker."""

    def __init__(self, reactor: Any, parsing: Callable[[str], bool] = lambda path: False) -> None:
        self.reactor = reactor
        #: Is a playlist at this path being parsed (in the thread pool)?
        self.parsing = parsing
        self.holds: Dict[bytes, Hold] = {}
        self._by_path: Dict[str, Hold] = {}
        self.counters: Dict[str, int] = dict.fromkeys(("refreshes", "players_held") + REASONS, 0)

    def get(self, key: bytes) -> Optional[Hold]:
        return self.holds.get(key)

    def start(
        self,
        key: bytes,
        path: str,
        bound: float,
        deadline: float,
        refresh: Callable[[], "Deferred[int]"],
    ) -> Optional[Hold]:
        """Hold ``key`` and refresh it with ``refresh()`` (an internal request);
        ``None`` when the refresh could not be started."""
        hold = Hold(self, key, path, bound, deadline)
        self.holds[key] = hold
        self._by_path[path] = hold
        self.counters["refreshes"] += 1
        try:
            done = refresh()
        except Exception:
            log.failure("hls: refreshing the live playlist {path} failed", path=path)
            hold.release("failed")
            return None
        done.addCallbacks(
            lambda status: hold.refreshed(status, self.parsing(path)), lambda failure: hold.refreshed(None)
        )
        return hold

    def learned(self, path: str, fresh: List[str]) -> Optional[Hold]:
        """A worker learnt the playlist at ``path``: the hold waiting for it, if any
        (it takes over the prefetch of ``fresh``)."""
        hold = self._by_path.get(path)
        if hold is None or hold.learnt or hold.released:
            return None
        return hold

    def forget(self, hold: Hold) -> None:
        if self.holds.get(hold.key) is hold:
            del self.holds[hold.key]
        if self._by_path.get(hold.path) is hold:
            del self._by_path[hold.path]

    def info(self) -> Dict[str, int]:
        figures = dict(self.counters)
        figures["holding"] = len(self.holds)
        return figures
