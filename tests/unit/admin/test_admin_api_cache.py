"""The TMDB proxy's cache calls (:mod:`speedproxy.admin.api_cache`), through the admin site."""

from __future__ import annotations

from typing import Any

import pytest

from speedproxy.admin.cache_figures import combine_info

from admin_cache_support import CacheControl, call, info, make_site


@pytest.fixture
def control() -> CacheControl:
    return CacheControl()


@pytest.fixture
def site(control) -> Any:
    return make_site(control)


def test_info_sums_memory_and_takes_disk_once(site) -> None:
    answer = call(site, "GET", "/cache/info")
    assert answer.status == 200
    body = answer.json
    memory, disk = body["tiers"]["memory"], body["tiers"]["disk"]
    assert (memory["entries"], memory["bytes"], memory["max_bytes"], memory["hits"]) == (3, 300, 2000, 4)
    assert memory["workers"] == 2
    # The disk tier is the host's: its size once, its hits (per worker) summed.
    assert (disk["entries"], disk["bytes"], disk["hits"]) == (10, 5000, 3)
    assert body["enabled"] is True
    assert (body["entries"], body["size_bytes"], body["max_size_bytes"]) == (13, 5300, 102000)
    assert (body["hits"], body["misses"]) == (7, 5)
    assert body["hit_rate"] == round(7 / 12, 4)
    assert memory["hit_ratio"] == round(4 / 12, 4)
    assert disk["hit_ratio"] == round(3 / 8, 4)
    assert [row["slot"] for row in body["workers"]] == [0, 1]


def test_info_of_workers_without_a_cache_or_answer() -> None:
    rows = [{"slot": 0, "pid": 1, "result": {"enabled": False}}, {"slot": 1, "pid": 2, "error": "timed out"}]
    body = combine_info(rows)
    assert body["enabled"] is False and body["entries"] == 0 and body["hit_rate"] == 0.0
    assert "disk" not in body["tiers"]
    assert body["errors"] == ["worker 1: timed out"]
    memory_only = combine_info([{"slot": 0, "pid": 1, "result": {"enabled": True, "memory": {"entries": 1}}}])
    assert memory_only["entries"] == 1 and set(memory_only["tiers"]) == {"memory"}


def test_keys_are_the_sorted_union(site, control) -> None:
    body = call(site, "GET", "/cache/keys?limit=2&prefix=http://h/").json
    assert body["keys"] == ["http://h/a", "http://h/b"]
    assert (body["total"], body["limit"], body["prefix"], body["enabled"]) == (2, 2, "http://h/", True)
    assert control.cache_fanout.calls[-1] == ("keys", {"prefix": "http://h/", "limit": 2})
    offset = call(site, "GET", "/cache/keys?limit=2&offset=2").json
    assert offset["keys"] == ["http://h/c"]
    assert control.cache_fanout.calls[-1] == ("keys", {"prefix": "", "limit": 4})
    assert call(site, "GET", "/cache/keys?limit=many").json["field"] == "limit"
    assert call(site, "GET", "/cache/keys?limit=100001").status == 400


def test_an_empty_listing_still_says_whether_there_is_a_cache(site, control) -> None:
    control.cache_fanout.answers["keys"] = lambda a: [{"slot": 0, "pid": 1, "result": []}]
    control.cache_fanout.answers["info"] = lambda a: [{"slot": 0, "pid": 1, "result": {"enabled": False}}]
    body = call(site, "GET", "/cache/keys").json
    assert (body["keys"], body["enabled"]) == ([], False)


def test_search_by_q_or_pattern(site, control) -> None:
    body = call(site, "GET", "/cache/search?q=movie").json
    assert body == {"enabled": True, "keys": ["http://h/movie"], "total": 1, "limit": 100, "query": "movie"}
    call(site, "GET", "/cache/search?pattern=tv&limit=5")
    assert control.cache_fanout.calls[-1] == ("search", {"text": "tv", "limit": 5})
    missing = call(site, "GET", "/cache/search")
    assert (missing.status, missing.json["field"]) == (400, "q")


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_clear_needs_confirm_for_everything(site, control, method) -> None:
    for path in ("/cache/clear", "/cache/clear?confirm=no", "/cache/clear?type=memory",
                 "/cache/clear?key=http://h/a", "/cache/clear?pattern=http://h/*"):
        answer = call(site, method, path)
        assert (answer.status, answer.json["field"]) == (400, "confirm"), path
    assert control.cache_fanout.calls == []


def test_clear_a_tier(site, control) -> None:
    answer = call(site, "POST", "/cache/clear?type=memory&confirm=yes")
    assert answer.status == 200
    assert answer.json["cleared"] == 9
    assert answer.json["type"] == "memory"
    assert answer.json["workers"] == [{"slot": 0, "pid": 10, "cleared": 5}, {"slot": 1, "pid": 11, "cleared": 4}]
    assert control.cache_fanout.calls == [("clear", {"tier": "memory"})]
    assert call(site, "DELETE", "/cache/clear", {"confirm": "yes"}).json["type"] == "all"
    bad = call(site, "POST", "/cache/clear?type=cold&confirm=yes")
    assert (bad.status, bad.json["field"]) == (400, "type")


def test_clear_a_key_or_pattern_purges(site, control) -> None:
    answer = call(site, "POST", "/cache/clear?confirm=yes&key=http://h/a")
    assert (answer.status, answer.json["cleared"], answer.json["scope"]) == (200, 3, "http://h/a")
    assert control.cache_fanout.calls[-1] == ("purge", {"url": "http://h/a"})
    call(site, "DELETE", "/cache/clear?confirm=yes&pattern=http://h/3/movie/*")
    assert control.cache_fanout.calls[-1] == ("purge", {"prefix": "http://h/3/movie/"})
    relative = call(site, "DELETE", "/cache/clear?confirm=yes&pattern=/3/movie/*")
    assert (relative.status, relative.json["field"]) == (400, "pattern")


def test_a_worker_that_fails_a_clear_makes_it_a_500_naming_it(site, control) -> None:
    control.cache_fanout.answers["clear"] = lambda a: [
        {"slot": 0, "pid": 10, "result": 5}, {"slot": 1, "pid": 11, "error": "Timeout"}
    ]
    answer = call(site, "POST", "/cache/clear?confirm=yes")
    assert answer.status == 500
    assert answer.json["error"] == "clear_incomplete"
    assert "worker 1: Timeout" in answer.json["detail"]
    assert answer.json["cleared"] == 5


def test_the_cache_calls_need_the_key(control) -> None:
    from speedproxy.config import parse_config
    from admin_cache_support import CONFIG

    control.config = parse_config(CONFIG + "admin: {api_key: k3y}\n")
    site = make_site(control)
    for method, path in (("GET", "/cache/info"), ("GET", "/cache/keys"), ("GET", "/cache/search?q=x"),
                         ("POST", "/cache/clear?confirm=yes"), ("POST", "/api/v1/cache/purge"),
                         ("POST", "/api/v1/cache/warmup"), ("GET", "/api/v1/cache/warmup/abc")):
        answer = call(site, method, path)
        assert (answer.status, answer.json["reason"]) == (401, "missing_key"), path
    assert control.cache_fanout.calls == []
    assert call(site, "GET", "/cache/info", headers={"X-API-Key": "k3y"}).status == 200


def test_metrics_ask_for_the_disk_tier_only_when_there_is_one(site, control) -> None:
    call(site, "GET", "/metrics")
    assert control.metrics_disk == [None]
    from speedproxy.config import parse_config
    from admin_cache_support import CONFIG

    control.config = parse_config(CONFIG + "cache: {disk_path: /tmp/x}\n")
    control.cache_fanout.disk = {"bytes": 5}
    answer = call(site, "GET", "/metrics")
    assert answer.status == 200 and answer.body == b"# metrics\n"
    assert control.metrics_disk[-1] == {"bytes": 5}


def test_info_shape_for_the_tmdb_tools(site) -> None:
    body = call(site, "GET", "/cache/info").json
    for field in ("enabled", "entries", "size_bytes", "max_size_bytes", "hits", "misses", "hit_rate", "tiers"):
        assert field in body
    assert info(1, 1, 1, 1, 1)["enabled"] is True


def test_listing_text_must_be_latin1(site, control) -> None:
    assert call(site, "GET", "/cache/search?q=%E2%82%AC").json["field"] == "q"
    assert call(site, "GET", "/cache/keys?prefix=%E2%82%AC").json["field"] == "prefix"
    assert control.cache_fanout.calls == []
