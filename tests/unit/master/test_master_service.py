"""The master's control surface (:mod:`speedproxy.master.service`): what it tells workers, asks them, lists."""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.defer import TimeoutError as DeferredTimeout

from master_unit_support import FakeControl, control_of, two_worker_master
from speedproxy.master.control import Inspect, SetReportedLoad
from speedproxy.master.service import MasterService


@pytest.fixture
def master() -> MasterService:
    return two_worker_master()


def _control(master: MasterService, slot: int) -> FakeControl:
    return control_of(master, slot)


def test_reported_loads_and_inspection(master) -> None:
    master.report_load("default", "a", 0.5)
    for slot in (0, 1):
        (arguments, deferred), = _control(master, slot).pending(SetReportedLoad)
        assert arguments == {"upstream": "default", "backend_id": "a", "load": 0.5}
        deferred.callback({"found": True})
    # A worker that becomes ready later is told too.
    master._announced = True
    master.worker_ready(master.workers[0], 100, 1)
    assert len(_control(master, 0).pending(SetReportedLoad)) == 1
    reports: List[Any] = []
    master.inspect_workers(3, 4).addCallback(reports.append)
    (arguments, d0), = _control(master, 0).pending(Inspect)
    assert arguments == {"active_limit": 3, "slow_limit": 4}
    d0.callback({"report": {"slot": 0, "serving": True}})
    (_, d1), = _control(master, 1).pending(Inspect)
    d1.errback(DeferredTimeout())
    assert reports[0][0] == {"slot": 0, "serving": True, "ready": True}
    assert reports[0][1]["serving"] is False and "error" in reports[0][1]
    table = master.process_table()
    assert [row["role"] for row in table] == ["master", "worker", "worker"]
