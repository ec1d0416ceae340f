"""Cache actions in a serving process (:mod:`speedproxy.admin.cache_worker`) and the worker's responders."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List, Optional

import pytest
from twisted.internet.defer import fail
from twisted.internet.testing import MemoryReactorClock

from speedproxy.admin.cache_worker import CacheActions, LocalCacheFanout, NoCacheFanout, fanout_of
from speedproxy.cache.control import CacheActionError
from speedproxy.config import parse_config
from speedproxy.master.control import CacheRefused
from speedproxy.proxy.core import ProxyCore
from speedproxy.worker.process import WorkerControl

CONFIG = """\
backends:
  default: [{id: a, host: 10.0.0.1, port: 80}]
routing:
  api: {path: /, host: example.com, upstream: default, cache: {enabled: true}}
"""


@pytest.fixture
def core() -> ProxyCore:
    made = ProxyCore(MemoryReactorClock(), parse_config(CONFIG))
    assert made.cache is not None
    memory = made.cache.memory
    for key in (b"http://example.com/a?x=1", b"http://example.com/a/b", b"http://other.org/a"):
        memory.put(key, "object", 100)
    memory.put((b"http://example.com/v", b"gzip"), "variant", 50)
    return made


def test_purge_a_url_drops_it_and_its_variants(core) -> None:
    actions = CacheActions(lambda: core)
    assert actions.purge(url="http://example.com/a?x=1") == 1
    assert actions.purge(url="http://example.com/v") == 1
    assert actions.purge(url="http://example.com/a?x=1") == 0
    assert actions.keys() == ["http://example.com/a/b", "http://other.org/a"]


def test_purge_a_prefix(core) -> None:
    actions = CacheActions(lambda: core)
    assert actions.purge(prefix="http://example.com/a") == 2
    assert sorted(actions.keys()) == ["http://example.com/v", "http://other.org/a"]


@pytest.mark.parametrize(
    "arguments",
    [{}, {"url": "http://h/", "prefix": "http://h/"}, {"prefix": ""}, {"url": "/relative"}, {"url": "ftp://h/x"}],
)
def test_unusable_purges_are_refused(core, arguments) -> None:
    with pytest.raises(CacheActionError):
        CacheActions(lambda: core).purge(**arguments)


def test_clear_info_keys_and_search(core) -> None:
    actions = CacheActions(lambda: core)
    info = actions.info()
    assert info["enabled"] is True
    assert info["memory"]["entries"] == 4
    assert actions.keys("http://example.com/", 2) == ["http://example.com/a?x=1", "http://example.com/a/b"]
    assert actions.search("other", 10) == ["http://other.org/a"]
    with pytest.raises(CacheActionError):
        actions.clear("everything")
    assert actions.clear("memory") == 4
    assert actions.info()["memory"]["entries"] == 0


def test_a_process_without_a_cache_has_nothing_to_act_on() -> None:
    for core in (None, SimpleNamespace(), SimpleNamespace(cache=None)):
        actions = CacheActions(lambda core=core: core)  # type: ignore[misc]
        assert actions.purge(url="http://h/x") == 0
        assert actions.clear("all") == 0
        assert actions.info() == {"enabled": False}
        assert actions.keys() == [] and actions.search("x") == []
    with pytest.raises(CacheActionError):
        CacheActions(lambda: None).clear("bogus")


def test_warm_a_url_no_route_matches(core) -> None:
    statuses: List[Any] = []
    CacheActions(lambda: core).warm("http://nowhere.example/x").addCallback(statuses.append)
    assert statuses == [None]
    failures: List[Any] = []
    CacheActions(lambda: None).warm("http://example.com/x").addErrback(failures.append)
    assert failures[0].check(CacheActionError)


def test_the_local_fanout_answers_one_row(core) -> None:
    fanout = LocalCacheFanout(CacheActions(lambda: core))
    rows: List[Any] = []
    fanout.each("purge", prefix="http://example.com/").addCallback(rows.append)
    assert rows[0][0]["slot"] == 0 and rows[0][0]["result"] == 3
    fanout.each("clear", tier="nope").addCallback(rows.append)
    assert rows[1][0]["refused"] is True and "nope" in rows[1][0]["error"]
    assert fanout.slots() == [0]
    disk: List[Any] = []
    fanout.disk_info().addCallback(disk.append)
    assert disk == [None]  # memory only


def test_a_control_without_a_fanout_gets_the_empty_one() -> None:
    assert isinstance(fanout_of(SimpleNamespace()), NoCacheFanout)
    rows: List[Any] = []
    NoCacheFanout().each("info").addCallback(rows.append)
    assert rows == [[]]


# -- the worker's AMP responders -------------------------------------------------------


class _Warm:
    def __init__(self, result: Any) -> None:
        self.result = result

    def warm(self, url: str) -> Any:
        return self.result


def _control(cache: Any) -> WorkerControl:
    return WorkerControl(SimpleNamespace(cache=cache))  # type: ignore[arg-type]


def test_responders_carry_out_the_actions(core) -> None:
    control = _control(CacheActions(lambda: core))
    assert control.purge_cache(url="http://example.com/a/b") == {"purged": 1}
    assert control.cache_keys("http://other", 10) == {"keys": ["http://other.org/a"]}
    assert control.search_cache("example", 1) == {"keys": ["http://example.com/a?x=1"]}
    assert control.cache_info()["info"]["enabled"] is True
    assert control.clear_cache("all") == {"cleared": 3}


def test_responders_turn_bad_arguments_into_refusals(core) -> None:
    control = _control(CacheActions(lambda: core))
    with pytest.raises(CacheRefused):
        control.purge_cache(url="not a url")
    with pytest.raises(CacheRefused):
        control.clear_cache("cold")
    failures: List[Any] = []
    _control(_Warm(fail(CacheActionError("not serving yet")))).warm_cache("http://h/").addErrback(failures.append)
    assert failures[0].check(CacheRefused)
    answers: List[Optional[dict]] = []
    _control(CacheActions(lambda: core)).warm_cache("http://elsewhere/").addCallback(answers.append)
    assert answers == [{"status": None}]
