"""The master's cache fan-out: cache actions sent to every worker over AMP.

Each worker has its own memory tier and shares the host's disk tier, so a
purge or a clear goes to every worker and a listing is the union of their
answers.  :meth:`MasterCacheFanout.each` answers one row per live worker,
in slot order, as :mod:`speedproxy.admin.cache_worker` describes; a worker
that does not answer in time (or whose channel drops) gets an ``error``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, DeferredList, fail, succeed

from speedproxy.admin.cache_worker import answer_row
from speedproxy.master.control import CacheInfo, CacheKeys, ClearCache, PurgeCache, SearchCache, WarmCache

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.master.service import MasterService
    from speedproxy.master.supervision import WorkerHandle

#: action → (command, answer key, seconds a worker has to answer).
COMMANDS: Dict[str, Tuple[Any, str, float]] = {
    "purge": (PurgeCache, "purged", 30.0),
    "clear": (ClearCache, "cleared", 60.0),
    "info": (CacheInfo, "info", 10.0),
    "keys": (CacheKeys, "keys", 10.0),
    "search": (SearchCache, "keys", 30.0),
}
#: Seconds a worker has to fetch one warm-up URL.
WARM_TIMEOUT = 300.0
#: Seconds a scrape of /metrics waits for the disk tier's figures.
DISK_INFO_TIMEOUT = 2.0


class MasterCacheFanout:
    """Sends cache actions to the workers of ``master``."""

    def __init__(self, master: "MasterService") -> None:
        self.master = master

    def _live(self) -> List["WorkerHandle"]:
        return sorted(
            (h for h in self.master.workers.values() if h.control is not None and not h.retiring),
            key=lambda handle: handle.slot,
        )

    def _call(self, handle: "WorkerHandle", command: Any, timeout: float, **arguments: Any) -> Deferred:
        call = handle.control.callRemote(command, **arguments)  # type: ignore[union-attr]
        if timeout:
            call.addTimeout(timeout, self.master.reactor)
        return call

    def slots(self) -> List[int]:
        """Slots of the workers serving now (a warm-up fetch goes to one of them)."""
        return [handle.slot for handle in self._live() if handle.ready]

    def each(self, action: str, **arguments: Any) -> Deferred:
        """Run ``action`` on every live worker; fires with one row per worker."""
        command, key, timeout = COMMANDS[action]
        handles = self._live()
        calls = [self._call(handle, command, timeout, **arguments) for handle in handles]

        def collect(results: List[Tuple[bool, Any]]) -> List[Dict[str, Any]]:
            return [
                answer_row(handle.slot, handle.pid, value[key]) if ok else answer_row(handle.slot, handle.pid, error=value)
                for handle, (ok, value) in zip(handles, results)
            ]

        return DeferredList(calls, consumeErrors=True).addCallback(collect)

    def warm(self, slot: int, url: str) -> Deferred:
        """Have worker ``slot`` fetch ``url``; fires with the status (``None``: no route)."""
        handle = self.master.workers.get(slot)
        if handle is None or handle.control is None:
            return fail(RuntimeError(f"worker {slot} is not running"))
        return self._call(handle, WarmCache, WARM_TIMEOUT, url=url).addCallback(lambda answer: answer.get("status"))

    def disk_info(self) -> Deferred:
        """The disk tier's figures as one worker sees them (``None``: no disk tier, or no answer)."""
        handles = [handle for handle in self._live() if handle.ready]
        if not handles:
            return succeed(None)

        def disk(answer: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            info = answer.get("info") or {}
            return info.get("disk") if info.get("enabled") else None

        return self._call(handles[0], CacheInfo, DISK_INFO_TIMEOUT).addCallbacks(disk, lambda _: None)
