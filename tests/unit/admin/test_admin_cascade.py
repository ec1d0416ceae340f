"""Cascading purges to upstream speedproxies (:mod:`speedproxy.admin.cascade`), with treq's stub."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from speedproxy.admin.cascade import MAX_HOPS, PATH_HEADER, Cascade, incoming_path, targets
from speedproxy.admin.json_resource import APIError
from speedproxy.config import parse_config

CONFIG = parse_config(
    """\
cache: {cascade_purge: true}
backends:
  default:
    - {id: b1, host: 10.0.0.1, port: 80, admin_url: "http://10.0.0.1:9901/", admin_api_key: k1}
    - {id: b2, host: 10.0.0.2, port: 80, admin_url: "http://10.0.0.1:9901"}
    - {id: b3, host: 10.0.0.3, port: 80}
  other:
    - {id: c1, host: 10.0.1.1, port: 80, admin_url: "http://10.0.1.1:9901"}
routing:
  default: {path: /, upstream: default}
"""
)


class Upstream(Resource):
    """An upstream speedproxy's admin API: records calls, answers JSON."""

    isLeaf = True

    def __init__(self, node: str = "up-node", status: int = 200) -> None:
        super().__init__()
        self.node = node
        self.status = status
        self.calls: List[Dict[str, Any]] = []

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        self.calls.append(
            {
                "host": request.getRequestHostname().decode(),
                "uri": request.uri.decode(),
                "key": request.getHeader(b"x-api-key"),
                "path": request.getHeader(PATH_HEADER),
                "body": json.loads(body) if body else None,
            }
        )
        request.setResponseCode(self.status)
        return json.dumps({"purged": 3, "node": self.node}).encode()


def _cascade(resource: Resource, node: str = "me:9901-aa") -> Cascade:
    return Cascade(Clock(), client=StubTreq(resource), node_id=node)


def _result(deferred: Deferred) -> Any:
    results: List[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_targets_are_the_distinct_admin_urls() -> None:
    assert targets(CONFIG) == [
        {"upstream": "default", "backend": "b1", "url": "http://10.0.0.1:9901", "key": "k1"},
        {"upstream": "other", "backend": "c1", "url": "http://10.0.1.1:9901", "key": ""},
    ]


def test_incoming_path_reads_every_header_value() -> None:
    class FakeRequest:
        class requestHeaders:
            @staticmethod
            def getRawHeaders(name: bytes, default: Any) -> List[bytes]:
                return [b"a:1-x, b:2-y", b" ,c"]

    assert incoming_path(FakeRequest()) == ["a:1-x", "b:2-y", "c"]


def test_a_purge_is_forwarded_with_the_key_and_the_path() -> None:
    upstream = Upstream()
    cascade = _cascade(upstream)
    rows = _result(cascade.forward(CONFIG, ["first:1-zz"], "purge", {"url": "http://site/x"}))
    assert [row["backend"] for row in rows] == ["b1", "c1"]
    assert rows[0] == {"upstream": "default", "backend": "b1", "url": "http://10.0.0.1:9901", "status": 200,
                       "result": {"purged": 3, "node": "up-node"}}
    first, second = upstream.calls
    assert first["uri"] == "/api/v1/cache/purge"
    assert first["body"] == {"url": "http://site/x"}
    assert first["key"] == b"k1" and second["key"] is None
    assert first["path"] == b"first:1-zz, me:9901-aa"
    assert cascade.learned == {"http://10.0.0.1:9901": "up-node", "http://10.0.1.1:9901": "up-node"}


def test_a_clear_is_forwarded_with_confirm() -> None:
    upstream = Upstream()
    _result(_cascade(upstream).forward(CONFIG, [], "clear", {"type": "memory"}))
    assert upstream.calls[0]["uri"] == "/cache/clear?type=memory&confirm=yes"
    assert upstream.calls[0]["path"] == b"me:9901-aa"


def test_nodes_already_on_the_path_are_not_asked_again() -> None:
    upstream = Upstream(node="up-node")
    cascade = _cascade(upstream)
    cascade.learned["http://10.0.0.1:9901"] = "up-node"
    rows = _result(cascade.forward(CONFIG, ["up-node"], "purge", {"url": "http://site/x"}))
    assert rows[0]["skipped"] == "that node is already on the purge path" and rows[0]["status"] is None
    assert [call["host"] for call in upstream.calls] == ["10.0.1.1"]
    assert cascade.passed_here(["x", "me:9901-aa"]) and not cascade.passed_here(["x"])
    assert cascade.skipped(["me:9901-aa"])["skipped"] is True


def test_a_long_path_goes_no_further() -> None:
    upstream = Upstream()
    rows = _result(_cascade(upstream).forward(CONFIG, [f"n{i}" for i in range(MAX_HOPS)], "purge", {"url": "u"}))
    assert all("skipped" in row for row in rows)
    assert upstream.calls == []


class SlowClient:
    """Never answers (until cancelled)."""

    def post(self, url: str, **kwargs: Any) -> Deferred:
        return Deferred()


class BrokenClient:
    def post(self, url: str, **kwargs: Any) -> Deferred:
        raise ConnectionRefusedError("connection refused")


def test_silent_and_unreachable_upstreams_are_errors_in_their_rows() -> None:
    clock = Clock()
    cascade = Cascade(clock, client=SlowClient(), node_id="me", timeout=5.0)
    pending = cascade.forward(CONFIG, [], "purge", {"url": "http://site/x"})
    clock.advance(5.1)
    rows = _result(pending)
    assert rows[0]["error"] == "no answer within 5s" and rows[0]["status"] is None
    rows = _result(Cascade(clock, client=BrokenClient(), node_id="me").forward(CONFIG, [], "clear", {"type": "all"}))
    assert "refused" in rows[0]["error"]


def test_around_forwards_first_then_acts_here() -> None:
    upstream = Upstream()
    cascade = _cascade(upstream)
    order: List[str] = []

    def local() -> Deferred:
        order.append(f"local after {len(upstream.calls)} forwards")
        return succeed({"purged": 1})

    body = _result(cascade.around(CONFIG, [], "purge", {"url": "http://site/x"}, local))
    assert order == ["local after 2 forwards"]
    assert body["node"] == "me:9901-aa" and len(body["upstreams"]) == 2


def test_around_without_cascade_purge_only_acts_here() -> None:
    upstream = Upstream()
    quiet = parse_config("backends: {default: [{id: b1, host: h, port: 1, admin_url: 'http://h:2'}]}\n"
                         "routing: {default: {path: /, upstream: default}}\n")
    body = _result(_cascade(upstream).around(quiet, [], "purge", {"url": "u"}, lambda: succeed({"purged": 0})))
    assert "upstreams" not in body and upstream.calls == []


def test_a_local_failure_keeps_the_upstream_rows() -> None:
    def local() -> Any:
        raise APIError(500, "purge_incomplete", "worker 1: gone")

    failure = _result(_cascade(Upstream()).around(CONFIG, [], "purge", {"url": "u"}, local))
    assert failure.check(APIError) and len(failure.value.extra["upstreams"]) == 2


def test_the_default_node_id_names_host_and_admin_port() -> None:
    cascade = Cascade(Clock(), admin_port=lambda: 9911)
    assert ":9911-" in cascade.node_id
    assert cascade.node_id == cascade.node_id
    broken: Optional[Cascade] = Cascade(Clock(), admin_port=lambda: 1 / 0)
    assert broken is not None and ":-" in broken.node_id
