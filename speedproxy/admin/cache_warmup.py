"""Cache warm-up jobs: fetch a list of URLs through the workers, in the background.

``POST /api/v1/cache/warmup`` starts a :class:`WarmupJob` and answers at
once; the job fetches its URLs through the workers (round robin over the
workers serving, at most :attr:`WarmupJobs.concurrency` at a time), each
fetch filling the cache on its way (see ``speedproxy.cache.control.warm``).
Jobs live in the master's memory; the last :attr:`WarmupJobs.keep` are kept.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional

from twisted.internet.defer import Deferred, fail, maybeDeferred

#: URLs fetched at a time per job.
CONCURRENCY = 8
#: Jobs kept (finished ones are dropped first).
KEEP = 100
#: Per-URL outcomes kept per job (the last ones).
RECENT = 100
#: URLs one job may hold.
MAX_URLS = 10000


@dataclass(eq=False)
class WarmupJob:
    """One warm-up job and its progress."""

    id: str
    urls: List[str]
    created: float
    state: str = "running"
    done: int = 0
    failed: int = 0
    finished: Optional[float] = None
    in_flight: int = 0
    next: int = 0
    pumping: bool = False
    #: The last :data:`RECENT` outcomes: ``url``, ``status``, ``worker``, ``ms`` (and ``error``).
    recent: Deque[Dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))
    #: Answers by status (``"200"``, ``"no_route"``, ``"error"``).
    by_status: Dict[str, int] = field(default_factory=dict)

    def summary(self, recent: bool = True) -> Dict[str, Any]:
        body: Dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "total": len(self.urls),
            "done": self.done,
            "failed": self.failed,
            "succeeded": self.done - self.failed,
            "pending": len(self.urls) - self.done,
            "in_flight": self.in_flight,
            "created": round(self.created, 3),
            "finished": round(self.finished, 3) if self.finished is not None else None,
            "by_status": dict(self.by_status),
        }
        if recent:
            body["recent"] = list(self.recent)
        return body


class TooManyJobs(Exception):
    """Every kept job is still running; no room for another."""


class WarmupJobs:
    """Runs warm-up jobs through a cache fan-out.

    ``fanout`` returns the control's fan-out (``slots()`` and
    ``warm(slot, url)``); ``clock`` gives ``seconds()`` for durations and
    ``wall`` the time shown.
    """

    def __init__(
        self,
        fanout: Callable[[], Any],
        clock: Any,
        concurrency: int = CONCURRENCY,
        keep: int = KEEP,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._fanout = fanout
        self.clock = clock
        self.concurrency = concurrency
        self.keep = keep
        self._wall = wall
        self.jobs: "OrderedDict[str, WarmupJob]" = OrderedDict()
        self._turn = 0

    def get(self, job_id: str) -> Optional[WarmupJob]:
        return self.jobs.get(job_id)

    def start(self, urls: List[str]) -> WarmupJob:
        """Start fetching ``urls``; the job runs on after this returns.

        :raises TooManyJobs: :attr:`keep` jobs are all still running.
        """
        if len(self.jobs) >= self.keep:
            finished = [key for key, job in self.jobs.items() if job.state != "running"]
            if len(self.jobs) - len(finished) >= self.keep:
                raise TooManyJobs(f"{self.keep} warm-up jobs are still running")
            for key in finished[: len(self.jobs) - self.keep + 1]:
                del self.jobs[key]
        job = WarmupJob(id=os.urandom(6).hex(), urls=list(urls), created=self._wall())
        self.jobs[job.id] = job
        self._pump(job)
        return job

    def _pump(self, job: WarmupJob) -> None:
        """Start fetches up to the concurrency; note the end.

        Iterative: a fetch that ends at once (no worker, a refusal) calls
        back in here, which then returns and leaves the loop to go on.
        """
        if job.pumping:
            return
        job.pumping = True
        try:
            while job.in_flight < self.concurrency and job.next < len(job.urls):
                url = job.urls[job.next]
                job.next += 1
                job.in_flight += 1
                self._fetch(job, url)
        finally:
            job.pumping = False
        if job.in_flight == 0 and job.next >= len(job.urls) and job.state == "running":
            job.state = "done"
            job.finished = self._wall()

    def _fetch(self, job: WarmupJob, url: str) -> None:
        fanout = self._fanout()
        slots = fanout.slots() if fanout is not None else []
        started = self.clock.seconds()
        if not slots:
            call: Deferred = fail(RuntimeError("no worker is serving"))
            slot = None
        else:
            slot = slots[self._turn % len(slots)]
            self._turn += 1
            call = maybeDeferred(fanout.warm, slot, url)

        def finished(status: Any, error: Optional[str] = None) -> None:
            job.in_flight -= 1
            job.done += 1
            outcome: Dict[str, Any] = {"url": url, "status": status, "worker": slot,
                                       "ms": round((self.clock.seconds() - started) * 1000.0, 1)}
            if error is not None:
                outcome["error"] = error
                key = "error"
            elif status is None:
                outcome["error"] = "no route matches this URL"
                key = "no_route"
            else:
                key = str(status)
            if error is not None or status is None or status >= 400:
                job.failed += 1
            job.by_status[key] = job.by_status.get(key, 0) + 1
            job.recent.append(outcome)
            self._pump(job)

        call.addCallbacks(finished, lambda failure: finished(None, failure.getErrorMessage() or repr(failure.value)))
