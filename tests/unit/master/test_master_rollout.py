"""Config rollout (:mod:`speedproxy.master.rollout`): serialised, all-or-nothing, late workers caught up."""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from master_unit_support import FakeControl, control_of, two_worker_master
from speedproxy.master.control import ApplyConfig, ConfigRefused
from speedproxy.master.service import MasterService


@pytest.fixture
def master() -> MasterService:
    return two_worker_master()


def _control(master: MasterService, slot: int) -> FakeControl:
    return control_of(master, slot)


def _with_backend(config: Any, backend_id: str) -> Any:
    from speedproxy.admin.changes import add_backend

    return add_backend(config, "default", {"id": backend_id, "host": "10.0.0.9", "port": 80})


def _answer_all(master: MasterService) -> None:
    for slot in (0, 1):
        for arguments, deferred in _control(master, slot).pending(ApplyConfig):
            deferred.callback({"version": arguments["version"]})


def test_changes_are_serialised(master) -> None:
    seen: List[List[str]] = []

    def add(backend_id: str):
        def make(current: Any) -> Any:
            seen.append([b.id for b in current.backends["default"]])
            return _with_backend(current, backend_id)
        return make

    results: List[int] = []
    master.update_config(add("b")).addCallback(results.append)
    master.update_config(add("c")).addCallback(results.append)
    assert seen == [["a"]]  # the second waits for the first
    _answer_all(master)
    assert seen == [["a"], ["a", "b"]]
    _answer_all(master)
    assert results == [2, 3]
    assert [b.id for b in master.config.backends["default"]] == ["a", "b", "c"]
    assert master.config_version == 3


def test_a_refusal_rolls_every_worker_back(master) -> None:
    failures: List[Failure] = []
    master.update_config(lambda c: _with_backend(c, "b")).addErrback(failures.append)
    (args0, d0), = _control(master, 0).pending(ApplyConfig)
    (args1, d1), = _control(master, 1).pending(ApplyConfig)
    d0.callback({"version": 2})
    d1.errback(ConfigRefused("bad"))
    assert failures and "worker 1" in failures[0].getErrorMessage()
    assert master.config_version == 1
    assert [b.id for b in master.config.backends["default"]] == ["a"]
    (rollback, _), = _control(master, 0).pending(ApplyConfig)
    assert rollback["version"] == 1
    assert [b["id"] for b in rollback["config"]["backends"]["default"]] == ["a"]
    assert not _control(master, 1).pending(ApplyConfig)  # it refused: it kept the old one


def test_a_worker_that_times_out_is_put_back_too(master) -> None:
    failures: List[Failure] = []
    master.update_config(lambda c: _with_backend(c, "b")).addErrback(failures.append)
    (_, d0), = _control(master, 0).pending(ApplyConfig)
    d0.callback({"version": 2})
    master.reactor.advance(master.push_timeout + 1)
    assert failures and failures[0].check(RuntimeError)
    versions = [a["version"] for a, _ in _control(master, 1).pending(ApplyConfig)]
    assert versions == [1]


def test_a_worker_lost_meanwhile_is_no_refusal(master) -> None:
    results: List[int] = []
    master.update_config(lambda c: _with_backend(c, "b")).addCallback(results.append)
    (_, d0), = _control(master, 0).pending(ApplyConfig)
    (_, d1), = _control(master, 1).pending(ApplyConfig)
    d0.callback({"version": 2})
    d1.errback(ConnectionLost())
    assert results == [2]


def test_a_worker_that_connected_during_a_change_is_caught_up(master) -> None:
    master.workers[1].control = None  # still starting
    results: List[int] = []
    master.update_config(lambda c: _with_backend(c, "b")).addCallback(results.append)
    late = FakeControl()
    master.workers[1].control = late  # type: ignore[assignment]
    (_, d0), = _control(master, 0).pending(ApplyConfig)
    d0.callback({"version": 2})
    assert results == [2]
    (arguments, _), = late.pending(ApplyConfig)
    assert arguments["version"] == 2
