"""Cache actions inside a serving process, and the single process's fan-out.

:class:`CacheActions` is what a worker runs for the master's cache commands
(``PurgeCache``, ``ClearCache``, ``CacheInfo``, ``CacheKeys``,
``SearchCache``, ``WarmCache``): thin calls of
:mod:`speedproxy.cache.control` on the worker's :class:`ProxyCore`, safe
before the core exists or when it has no cache.

The admin API reaches the caches of every serving process through a
*fan-out* (the control's ``cache_fanout``): the master's one sends AMP
commands to its workers (:mod:`speedproxy.master.cache_fanout`);
:class:`LocalCacheFanout` here serves ``server.workers: 0``, where the
process serving the admin API is the only one with a cache.  Both answer
:meth:`each` with one row per serving process::

    {"slot": 0, "pid": 4242, "result": <the action's answer>}
    {"slot": 1, "pid": 4243, "error": "...", "refused": True}   # refused: bad arguments
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed

from speedproxy.cache import control as cache_control
from speedproxy.cache.control import CacheActionError

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.core import ProxyCore

#: The actions a fan-out knows, with what each returns.
ACTIONS = ("purge", "clear", "info", "keys", "search")


class CacheActions:
    """The cache actions of one serving process.

    ``core`` returns the process's :class:`ProxyCore` (``None`` before its
    first config).  A core without a cache (no ``cache`` attribute, or
    ``None``) has nothing to purge, list or count.

    :raises CacheActionError: for unusable arguments (a relative URL, an
        unknown tier, an empty prefix).
    """

    def __init__(self, core: Callable[[], Optional["ProxyCore"]]) -> None:
        self._core = core

    def _cached(self) -> Optional["ProxyCore"]:
        core = self._core()
        if core is None or getattr(core, "cache", None) is None:
            return None
        return core

    def purge(self, url: Optional[str] = None, prefix: Optional[str] = None) -> int:
        """Drop ``url`` (every variant) or every key starting with ``prefix``."""
        if (url is None) == (prefix is None):
            raise CacheActionError("give exactly one of url and prefix")
        if prefix is not None and not prefix:
            raise CacheActionError("an empty prefix would purge everything: use /cache/clear")
        core = self._cached()
        if core is None:
            return 0
        if url is not None:
            return cache_control.purge_url(core, url)
        return cache_control.purge_prefix(core, prefix)  # type: ignore[arg-type]

    def clear(self, tier: str) -> int:
        if tier not in ("memory", "disk", "all"):
            raise CacheActionError(f"unknown tier {tier!r} (memory, disk or all)")
        core = self._cached()
        return 0 if core is None else cache_control.clear(core, tier)

    def info(self) -> Dict[str, Any]:
        core = self._cached()
        return {"enabled": False} if core is None else cache_control.info(core)

    def keys(self, prefix: str = "", limit: int = 100) -> List[str]:
        core = self._cached()
        return [] if core is None else cache_control.keys(core, prefix, limit)

    def search(self, text: str, limit: int = 100) -> List[str]:
        core = self._cached()
        return [] if core is None else cache_control.search(core, text, limit)

    def warm(self, url: str) -> Deferred:
        """Fetch ``url`` through its route; fires with the status (``None``: no route)."""
        core = self._core()
        if core is None:
            return fail(CacheActionError("not serving yet"))
        return maybeDeferred(cache_control.warm, core, url)

    def run(self, action: str, arguments: Dict[str, Any]) -> Any:
        """Carry out one of :data:`ACTIONS` (what :meth:`LocalCacheFanout.each` calls)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown cache action {action!r}")
        return getattr(self, action)(**arguments)


def answer_row(slot: int, pid: int, value: Any = None, error: Any = None) -> Dict[str, Any]:
    """One process's row of a fan-out answer (``error``: a Failure or an exception)."""
    row: Dict[str, Any] = {"slot": slot, "pid": pid}
    if error is None:
        row["result"] = value
        return row
    exception = getattr(error, "value", error)
    row["error"] = str(exception) or type(exception).__name__
    if isinstance(exception, CacheActionError) or type(exception).__name__ == "CacheRefused":
        row["refused"] = True
    return row


class LocalCacheFanout:
    """The fan-out of ``server.workers: 0``: one process, called directly."""

    def __init__(self, actions: CacheActions, slot: int = 0) -> None:
        self.actions = actions
        self.slot = slot

    def slots(self) -> List[int]:
        """The serving processes a warm-up fetch can go to."""
        return [self.slot]

    def each(self, action: str, **arguments: Any) -> Deferred:
        """Run ``action`` in every serving process: here, this one."""
        try:
            value = self.actions.run(action, arguments)
        except Exception as error:  # reported per process, like a worker's
            return succeed([answer_row(self.slot, os.getpid(), error=error)])
        return succeed([answer_row(self.slot, os.getpid(), value)])

    def warm(self, slot: int, url: str) -> Deferred:
        """Fetch ``url`` here; fires with the status (``None``: no route)."""
        return self.actions.warm(url)

    def disk_info(self) -> Deferred:
        """The disk tier's ``info()`` (``None`` without one)."""
        try:
            info = self.actions.info()
        except Exception:
            return succeed(None)
        return succeed(info.get("disk") if info.get("enabled") else None)


class NoCacheFanout:
    """The fan-out of a control that has no caches to reach: nothing to act on."""

    def slots(self) -> List[int]:
        return []

    def each(self, action: str, **arguments: Any) -> Deferred:
        return succeed([])

    def warm(self, slot: int, url: str) -> Deferred:
        return fail(RuntimeError("no worker is serving"))

    def disk_info(self) -> Deferred:
        return succeed(None)


def fanout_of(control: Any) -> Any:
    """The control's cache fan-out (see :class:`speedproxy.admin.context.AdminControl`)."""
    fanout = getattr(control, "cache_fanout", None)
    return fanout if fanout is not None else NoCacheFanout()
