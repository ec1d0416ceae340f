"""Warm-up jobs (:mod:`speedproxy.admin.cache_warmup`): concurrency, round robin, progress, bounds."""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from speedproxy.admin.cache_warmup import TooManyJobs, WarmupJobs


class Fanout:
    def __init__(self, slots: List[int]) -> None:
        self._slots = slots
        self.calls: List[Tuple[int, str, Deferred]] = []

    def slots(self) -> List[int]:
        return list(self._slots)

    def warm(self, slot: int, url: str) -> Deferred:
        deferred: Deferred = Deferred()
        self.calls.append((slot, url, deferred))
        return deferred


def _urls(count: int) -> List[str]:
    return [f"http://h/{i}" for i in range(count)]


def test_fetches_run_at_most_n_at_a_time_round_robin() -> None:
    fanout = Fanout([0, 1])
    jobs = WarmupJobs(lambda: fanout, Clock(), concurrency=3)
    job = jobs.start(_urls(5))
    assert [(slot, url) for slot, url, _ in fanout.calls] == [(0, "http://h/0"), (1, "http://h/1"), (0, "http://h/2")]
    assert (job.state, job.in_flight, job.done) == ("running", 3, 0)
    fanout.calls[1][2].callback(200)
    assert len(fanout.calls) == 4 and fanout.calls[3][0] == 1
    for _, _, deferred in fanout.calls:  # the list grows as fetches end
        if not deferred.called:
            deferred.callback(200)
    assert len(fanout.calls) == 5
    assert (job.state, job.done, job.failed) == ("done", 5, 0)
    assert job.finished is not None
    assert job.summary()["by_status"] == {"200": 5}


def test_failures_are_counted_and_the_last_outcomes_kept() -> None:
    fanout = Fanout([3])
    jobs = WarmupJobs(lambda: fanout, Clock())
    job = jobs.start(_urls(4))
    fanout.calls[0][2].callback(200)
    fanout.calls[1][2].callback(None)  # no route
    fanout.calls[2][2].callback(503)
    fanout.calls[3][2].errback(RuntimeError("worker 3 went away"))
    summary = job.summary()
    assert (summary["state"], summary["done"], summary["failed"], summary["succeeded"]) == ("done", 4, 3, 1)
    assert summary["by_status"] == {"200": 1, "no_route": 1, "503": 1, "error": 1}
    last = summary["recent"][-1]
    assert (last["url"], last["worker"], last["status"], last["error"]) == ("http://h/3", 3, None, "worker 3 went away")
    assert summary["recent"][1]["error"] == "no route matches this URL"


def test_without_workers_every_url_fails_without_recursing() -> None:
    jobs = WarmupJobs(lambda: Fanout([]), Clock(), concurrency=8)
    job = jobs.start(_urls(5000))
    assert (job.state, job.done, job.failed) == ("done", 5000, 5000)
    assert len(job.recent) == 100


def test_fetches_that_answer_at_once_finish_the_job() -> None:
    class Quick:
        def slots(self) -> List[int]:
            return [0]

        def warm(self, slot: int, url: str) -> Deferred:
            return succeed(200) if url.endswith("0") else fail(ValueError("bad"))

    job = WarmupJobs(lambda: Quick(), Clock()).start(_urls(20))
    assert (job.state, job.done, job.failed) == ("done", 20, 18)


def test_jobs_are_bounded_finished_ones_go_first() -> None:
    fanout = Fanout([0])
    jobs = WarmupJobs(lambda: fanout, Clock(), keep=2)
    first = jobs.start(["http://h/a"])
    second = jobs.start(["http://h/b"])
    with pytest.raises(TooManyJobs):
        jobs.start(["http://h/c"])
    fanout.calls[0][2].callback(200)
    third = jobs.start(["http://h/c"])
    assert list(jobs.jobs) == [second.id, third.id]
    assert jobs.get(first.id) is None and jobs.get(third.id) is third


def test_summary_without_recent() -> None:
    job = WarmupJobs(lambda: Fanout([0]), Clock()).start(_urls(2))
    summary: Any = job.summary(recent=False)
    assert "recent" not in summary and summary["total"] == 2 and summary["pending"] == 2
