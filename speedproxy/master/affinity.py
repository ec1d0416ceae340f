"""``server.cpu_affinity``: pin each worker process to one CPU.

``off`` leaves placement to the scheduler.  ``auto`` pins worker N to the
N-th CPU the master may run on (nginx's ``worker_cpu_affinity auto``; with
more workers than CPUs they wrap around).  A list of CPU numbers gives one
per worker, cycled: ``[2, 3]`` puts workers 0, 2, 4... on CPU 2 and 1, 3,
5... on CPU 3.

The master applies it to a worker right after spawning it, with
``sched_setaffinity`` on every thread of the new process (the worker is
still importing Python modules then; threads it starts later inherit the
mask), and to every running worker again when a reload changes the setting
(``off`` then gives them back every CPU the master may use).  Doing it from
the master keeps the worker's start-up free of it and covers respawns.  A
CPU the host does not have is logged and the worker runs unpinned.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, List, Optional, Sequence, Set, Tuple, Union

from twisted.logger import Logger

log = Logger(namespace="speedproxy.master")

#: ``"off"``, ``"auto"`` or CPU numbers (:attr:`ServerConfig.cpu_affinity`).
Setting = Union[str, Sequence[int]]


def worker_cpus(setting: Setting, slot: int, available: Iterable[int]) -> Optional[Set[int]]:
    """The CPUs worker *slot* is pinned to, or ``None`` for ``off``.

    *available*: the CPUs the master may run on (``os.sched_getaffinity(0)``).
    """
    if isinstance(setting, str):
        if setting != "auto":
            return None
        cpus = sorted(available)
    else:
        cpus = list(setting)
    if not cpus:
        return None
    return {cpus[slot % len(cpus)]}


def process_threads(pid: int) -> List[int]:
    """Every thread of process *pid* (just *pid* where /proc cannot tell)."""
    try:
        return sorted(int(name) for name in os.listdir(f"/proc/{pid}/task"))
    except (OSError, ValueError):
        return [pid]


class CPUPinner:
    """Applies ``server.cpu_affinity`` to worker processes.

    The system calls are injected for tests; by default they are
    ``os.sched_getaffinity``/``os.sched_setaffinity`` (Linux), and where
    those do not exist nothing is pinned.
    """

    def __init__(
        self,
        get_affinity: Optional[Callable[[int], Set[int]]] = getattr(os, "sched_getaffinity", None),
        set_affinity: Optional[Callable[[int, Set[int]], None]] = getattr(os, "sched_setaffinity", None),
        threads: Callable[[int], List[int]] = process_threads,
    ) -> None:
        self._get = get_affinity
        self._set = set_affinity
        self._threads = threads

    def pin(self, slot: int, pid: int, setting: Setting, unpin: bool = False) -> Optional[Set[int]]:
        """Pin worker *slot* (process *pid*); return the CPUs it was given.

        With ``off``, nothing is done (a new worker inherits the master's
        CPUs) unless *unpin*, which gives it every CPU the master may use.
        Returns ``None`` when nothing was set, also after a logged failure.
        """
        if self._get is None or self._set is None or not pid:
            return None
        available = set(self._get(0))
        cpus = worker_cpus(setting, slot, available)
        if cpus is None:
            if not unpin:
                return None
            cpus = available
        try:
            for tid in self._threads(pid):
                self._set(tid, cpus)
        except ProcessLookupError:
            return None  # exited already: the master handles that elsewhere
        except OSError as error:
            log.warn(
                "worker {slot} (pid {pid}): cannot pin to CPU {cpus} (server.cpu_affinity): {error}; it runs unpinned",
                slot=slot, pid=pid, cpus=",".join(map(str, sorted(cpus))), error=error,
            )
            return None
        return cpus

    def repin(self, workers: Iterable[Tuple[int, int]], setting: Setting) -> None:
        """Apply a changed *setting* to running workers, ``(slot, pid)`` pairs."""
        for slot, pid in workers:
            self.pin(slot, pid, setting, unpin=True)


#: The pinner the master uses.
pinner = CPUPinner()
