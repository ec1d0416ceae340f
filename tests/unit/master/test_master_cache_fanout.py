"""The master's cache fan-out (:mod:`speedproxy.master.cache_fanout`) and its AMP commands."""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.protocols import amp

from speedproxy.config import parse_config
from speedproxy.master.cache_fanout import DISK_INFO_TIMEOUT, MasterCacheFanout
from speedproxy.master.control import (
    CacheInfo,
    CacheKeys,
    CacheRefused,
    ClearCache,
    PurgeCache,
    SearchCache,
    WarmCache,
)
from speedproxy.master.service import MasterService
from speedproxy.master.supervision import WorkerHandle

CONFIG = """\
server: {workers: 2}
backends:
  default: [{id: a, host: 10.0.0.1, port: 80}]
routing:
  default: {path: /, upstream: default}
"""


class FakeControl:
    def __init__(self) -> None:
        self.calls: List[Tuple[Any, dict, Deferred]] = []

    def callRemote(self, command: Any, **arguments: Any) -> Deferred:
        deferred: Deferred = Deferred()
        self.calls.append((command, arguments, deferred))
        return deferred


@pytest.fixture
def master() -> MasterService:
    service = MasterService(Clock(), parse_config(CONFIG), None)
    for slot in (0, 1):
        service.workers[slot] = WorkerHandle(slot, pid=100 + slot, control=FakeControl(), ready=True)  # type: ignore[arg-type]
    return service


def _calls(master: MasterService, slot: int) -> List[Tuple[Any, dict, Deferred]]:
    return master.workers[slot].control.calls  # type: ignore[union-attr]


def test_the_master_offers_its_fanout(master) -> None:
    assert isinstance(master.cache_fanout, MasterCacheFanout)


def test_each_sends_to_every_live_worker_and_answers_per_slot(master) -> None:
    rows: List[Any] = []
    master.cache_fanout.each("purge", url="http://h/x").addCallback(rows.append)
    (command0, args0, d0), = _calls(master, 0)
    (command1, args1, d1), = _calls(master, 1)
    assert (command0, args0) == (PurgeCache, {"url": "http://h/x"})
    d1.callback({"purged": 2})
    assert rows == []
    d0.callback({"purged": 1})
    assert rows == [[{"slot": 0, "pid": 100, "result": 1}, {"slot": 1, "pid": 101, "result": 2}]]


def test_a_refusal_a_lost_worker_and_a_silent_one_are_reported_per_worker(master) -> None:
    master.workers[2] = WorkerHandle(2, pid=102, control=FakeControl(), ready=True)  # type: ignore[arg-type]
    rows: List[Any] = []
    master.cache_fanout.each("clear", tier="memory").addCallback(rows.append)
    _calls(master, 0)[0][2].errback(CacheRefused("unknown tier"))
    _calls(master, 1)[0][2].errback(ConnectionLost())
    master.reactor.advance(61)
    (answer,) = rows
    assert answer[0] == {"slot": 0, "pid": 100, "error": "unknown tier", "refused": True}
    assert "error" in answer[1] and "refused" not in answer[1]
    assert answer[2]["slot"] == 2 and "error" in answer[2]


def test_retiring_and_unconnected_workers_are_left_out(master) -> None:
    master.workers[1].retiring = True
    master.workers[2] = WorkerHandle(2, pid=0)
    rows: List[Any] = []
    master.cache_fanout.each("info").addCallback(rows.append)
    _calls(master, 0)[0][2].callback({"info": {"enabled": False}})
    assert rows == [[{"slot": 0, "pid": 100, "result": {"enabled": False}}]]
    assert master.cache_fanout.slots() == [0]


def test_keys_and_search_answer_lists(master) -> None:
    rows: List[Any] = []
    master.cache_fanout.each("search", text="movie", limit=5).addCallback(rows.append)
    for slot in (0, 1):
        command, arguments, deferred = _calls(master, slot)[0]
        assert (command, arguments) == (SearchCache, {"text": "movie", "limit": 5})
        deferred.callback({"keys": [f"http://h/movie/{slot}"]})
    assert [row["result"] for row in rows[0]] == [["http://h/movie/0"], ["http://h/movie/1"]]
    master.cache_fanout.each("keys", prefix="http://h/", limit=3)
    assert _calls(master, 0)[1][:2] == (CacheKeys, {"prefix": "http://h/", "limit": 3})


def test_warm_goes_to_one_worker(master) -> None:
    statuses: List[Any] = []
    master.cache_fanout.warm(1, "http://h/a").addCallback(statuses.append)
    assert _calls(master, 0) == []
    command, arguments, deferred = _calls(master, 1)[0]
    assert (command, arguments) == (WarmCache, {"url": "http://h/a"})
    deferred.callback({"status": 200})
    assert statuses == [200]
    failures: List[Any] = []
    master.cache_fanout.warm(7, "http://h/a").addErrback(failures.append)
    assert "worker 7" in failures[0].getErrorMessage()


def test_disk_info_asks_one_worker_briefly(master) -> None:
    seen: List[Any] = []
    master.cache_fanout.disk_info().addCallback(seen.append)
    assert _calls(master, 1) == []
    _calls(master, 0)[0][2].callback({"info": {"enabled": True, "disk": {"bytes": 10, "entries": 1}}})
    assert seen == [{"bytes": 10, "entries": 1}]
    master.cache_fanout.disk_info().addCallback(seen.append)
    master.reactor.advance(DISK_INFO_TIMEOUT + 0.1)
    assert seen[-1] is None


# -- the AMP commands --------------------------------------------------------------


def _round_trip_response(command: type, answer: dict) -> dict:
    box = command.makeResponse(answer, amp.AMP())
    (parsed,) = amp.parseString(amp.AmpBox(box).serialize())
    return command.parseResponse(parsed, amp.AMP())


def _round_trip_arguments(command: type, **arguments: Any) -> dict:
    box = command.makeArguments(arguments, amp.AMP())
    (parsed,) = amp.parseString(amp.AmpBox(box).serialize())
    return command.parseArguments(parsed, amp.AMP())


def test_purge_takes_either_url_or_prefix() -> None:
    assert _round_trip_arguments(PurgeCache, url="http://h/é") == {"url": "http://h/é", "prefix": None}
    assert _round_trip_arguments(PurgeCache, prefix="http://h/") == {"url": None, "prefix": "http://h/"}


def test_warm_answers_no_status_when_no_route_matched() -> None:
    assert _round_trip_response(WarmCache, {"status": None}) == {"status": None}
    assert _round_trip_response(WarmCache, {"status": 304}) == {"status": 304}


def test_listings_larger_than_one_amp_value_survive() -> None:
    keys = [f"http://host/{'x' * 100}/{i}" for i in range(2000)]
    assert _round_trip_response(CacheKeys, {"keys": keys}) == {"keys": keys}
    info = {"enabled": True, "memory": {"entries": 1}}
    assert _round_trip_response(CacheInfo, {"info": info}) == {"info": info}
    assert _round_trip_response(ClearCache, {"cleared": 3}) == {"cleared": 3}
