"""``POST /api/v1/cache/purge`` (:mod:`speedproxy.admin.api_cache_purge`), with cascading."""

from __future__ import annotations

import json
from typing import Any, List

import pytest
from treq.testing import StubTreq
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource

from speedproxy.admin.api_cache_purge import check_url
from speedproxy.admin.json_resource import APIError
from speedproxy.config import parse_config

from admin_cache_support import CONFIG, CacheControl, call, make_site


@pytest.fixture
def control() -> CacheControl:
    return CacheControl()


@pytest.fixture
def site(control) -> Any:
    return make_site(control)


def test_purge_a_url_on_every_worker(site, control) -> None:
    answer = call(site, "POST", "/api/v1/cache/purge", {"url": "http://h/x?q=1"})
    assert answer.status == 200
    assert answer.json == {
        "purged": 3,
        "workers": [{"slot": 0, "pid": 10, "purged": 2}, {"slot": 1, "pid": 11, "purged": 1}],
        "url": "http://h/x?q=1",
        "node": "node-a",
    }
    assert control.cache_fanout.calls == [("purge", {"url": "http://h/x?q=1"})]


def test_purge_a_prefix(site, control) -> None:
    answer = call(site, "POST", "/api/v1/cache/purge", {"prefix": "https://h/3/movie/"})
    assert (answer.status, answer.json["prefix"]) == (200, "https://h/3/movie/")
    assert control.cache_fanout.calls == [("purge", {"prefix": "https://h/3/movie/"})]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "url"),
        ({"url": "http://h/a", "prefix": "http://h/"}, "prefix"),
        ({"url": "/relative"}, "url"),
        ({"url": "ftp://h/a"}, "url"),
        ({"url": ""}, "url"),
        ({"url": 7}, "url"),
        ({"prefix": "h/"}, "prefix"),
        ({"url": "http://h/a b"}, "url"),
        ({"url": "http://h/a", "force": True}, "force"),
    ],
)
def test_a_wrong_body_names_the_field(site, control, body, field) -> None:
    answer = call(site, "POST", "/api/v1/cache/purge", body)
    assert (answer.status, answer.json["field"]) == (400, field), answer.json
    assert control.cache_fanout.calls == []


def test_not_json_and_wrong_method(site) -> None:
    assert call(site, "POST", "/api/v1/cache/purge", raw=b"url=x").status == 400
    assert call(site, "POST", "/api/v1/cache/purge", raw=b"[1]").status == 400
    assert call(site, "GET", "/api/v1/cache/purge").status == 405


def test_a_worker_that_does_not_answer_makes_it_a_500_naming_it(site, control) -> None:
    control.cache_fanout.answers["purge"] = lambda a: [
        {"slot": 0, "pid": 10, "result": 2}, {"slot": 1, "pid": 11, "error": "Connection was closed cleanly."}
    ]
    answer = call(site, "POST", "/api/v1/cache/purge", {"url": "http://h/x"})
    assert answer.status == 500
    assert answer.json["error"] == "purge_incomplete"
    assert "worker 1: Connection was closed cleanly." in answer.json["detail"]
    assert answer.json["workers"][0] == {"slot": 0, "pid": 10, "purged": 2}


def test_a_worker_refusing_the_arguments_is_a_400(site, control) -> None:
    control.cache_fanout.answers["purge"] = lambda a: [{"slot": 0, "pid": 10, "error": "bad path", "refused": True}]
    assert call(site, "POST", "/api/v1/cache/purge", {"url": "http://h/x"}).status == 400


def test_a_purge_is_audited_with_its_url(site) -> None:
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        call(site, "POST", "/api/v1/cache/purge", {"url": "http://h/secret-page"},
             headers={"X-Speedproxy-Purge-Path": "other:1-x"})
    finally:
        globalLogPublisher.removeObserver(events.append)
    (line,) = [e["line"] for e in events if e.get("log_namespace") == "speedproxy.audit"]
    assert "path=/api/v1/cache/purge outcome=allowed status=200" in line
    assert line.endswith('note="url=http://h/secret-page via=other:1-x"')


class Upstream(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: List[Any] = []

    def render_POST(self, request: Any) -> bytes:
        self.calls.append((request.uri, request.getHeader(b"x-api-key"), request.getHeader(b"x-speedproxy-purge-path")))
        return json.dumps({"purged": 1, "node": "node-b"}).encode()


def test_with_cascade_purge_upstreams_are_purged_first(control) -> None:
    control.config = parse_config(CONFIG + "cache: {cascade_purge: true}\n")
    upstream = Upstream()
    site = make_site(control, StubTreq(upstream))
    answer = call(site, "POST", "/api/v1/cache/purge", {"url": "http://h/x"},
                  headers={"X-Speedproxy-Purge-Path": "edge:1-e"})
    assert answer.status == 200
    assert answer.json["upstreams"] == [
        {"upstream": "default", "backend": "a", "url": "http://10.0.0.1:9901", "status": 200,
         "result": {"purged": 1, "node": "node-b"}},
    ]
    assert upstream.calls == [(b"/api/v1/cache/purge", b"up-key", b"edge:1-e, node-a")]
    cleared = call(site, "POST", "/cache/clear?confirm=yes&type=disk")
    assert cleared.json["upstreams"][0]["status"] == 200
    assert upstream.calls[-1][0] == b"/cache/clear?type=disk&confirm=yes"


def test_a_purge_that_already_passed_here_is_not_done_again(control) -> None:
    control.config = parse_config(CONFIG + "cache: {cascade_purge: true}\n")
    upstream = Upstream()
    site = make_site(control, StubTreq(upstream))
    for method, path, body in (("POST", "/api/v1/cache/purge", {"url": "http://h/x"}),
                               ("POST", "/cache/clear?confirm=yes", None)):
        answer = call(site, method, path, body, headers={"X-Speedproxy-Purge-Path": "edge:1-e, node-a"})
        assert answer.status == 200
        assert answer.json["skipped"] is True and answer.json["node"] == "node-a"
        assert answer.json["purge_path"] == ["edge:1-e", "node-a"]
    assert control.cache_fanout.calls == [] and upstream.calls == []


def test_check_url() -> None:
    assert check_url("https://h:8443/a?b=c", "url") == "https://h:8443/a?b=c"
    for bad in ("http://", "http://h/é", "http://h/" + "a" * 9000, "http://[::1/"):
        with pytest.raises(APIError):
            check_url(bad, "url")
