"""Tests for the admin site (:mod:`speedproxy.admin.site` and its resources), in memory.

A fake control stands in for the master; requests go through a real
``HTTPChannel`` over a ``StringTransport``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from speedproxy.admin.site import admin_site
from speedproxy.config import Config, parse_config
from speedproxy.tls import TLSNotEnabled

CONFIG = """\
backends:
  default:
    - {id: a, host: 10.0.0.1, port: 80}
routing:
  default: {path: /, upstream: default}
"""


class FakeControl:
    """The master's control surface, applying changes at once."""

    mode = "master"

    def __init__(self, config: Config) -> None:
        self.reactor = Clock()
        self.config = config
        self.config_version = 1
        self.config_path: Optional[str] = None
        self.started_at = time.time()
        self.fail_with: Optional[Exception] = None
        self.loads: List[Tuple[str, str, float]] = []
        self.disconnected: List[Tuple[str, str]] = []

    def state(self) -> Dict[str, Any]:
        return {
            "config": self.config,
            "workers": [{"slot": 0, "pid": 1, "ready": True, "config_version": self.config_version}],
            "restarts": 0,
            "config_version": self.config_version,
            "backend_up": {},
        }

    def stats_snapshot(self) -> Dict[str, Any]:
        return {
            "totals": {"requests": 0, "status": {}, "avg_latency_ms": 0.0, "active_connections": 0},
            "latency_histogram": {"0.1": 0, "+Inf": 0},
            "workers": self.state()["workers"],
            "backends": [],
            "routes": [],
        }

    def metrics_text(self) -> bytes:
        return b"# nothing\n"

    def update_config(self, make: Callable[[Config], Config]) -> Deferred:
        try:
            new = make(self.config)
        except Exception:
            return fail()
        if self.fail_with is not None:
            return fail(self.fail_with)
        self.config = new
        self.config_version += 1
        return succeed(self.config_version)

    def disconnect_backend(self, upstream: str, backend_id: str) -> Deferred:
        self.disconnected.append((upstream, backend_id))
        return succeed([{"closed": 2}, {"closed": 1}])

    def report_load(self, upstream: str, backend_id: str, load: float) -> Deferred:
        self.loads.append((upstream, backend_id, load))
        return succeed([])

    def inspect_workers(self, active_limit: int = 0, slow_limit: int = 0) -> Deferred:
        backends = {
            name: {b.id: {"healthy": True, "available": True, "in_flight": 0, "requests": 0, "failures": 0,
                          "ewma_response_ms": 0.0, "reported_load": 0.0} for b in members}
            for name, members in self.config.backends.items()
        }
        return succeed([{"slot": 0, "pid": 1, "serving": True, "ready": True, "active": [], "active_count": 0,
                         "slow": [], "slow_total": 0, "backends": backends}])

    def process_table(self) -> List[Dict[str, Any]]:
        return [{"role": "master", "slot": None, "pid": os.getpid()}]

    def reload_ssl(self) -> Deferred:
        return fail(TLSNotEnabled("ssl.enabled is false: there is no certificate to reload"))


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower().decode()] = value.strip().decode()

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def call(site: Any, method: str, path: str, body: Any = None, headers: Dict[str, str] = None, raw: bytes = None,
         chunked: bool = False) -> Response:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9901))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    lines = [f"{method} {path} HTTP/1.1", "Host: admin", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + 100]), data[i:i + 100]) for i in range(0, len(data), 100))
        payload += b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(data)}")
        payload = data
    channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
    return Response(transport.value())


@pytest.fixture
def control() -> FakeControl:
    return FakeControl(parse_config(CONFIG))


@pytest.fixture
def site(control) -> Any:
    made = admin_site(control, environ={})
    made.timeOut = None
    return made


def test_config_get_and_put(site, control) -> None:
    answer = call(site, "GET", "/api/v1/config")
    assert answer.status == 200
    assert answer.json["config_version"] == 1
    config = answer.json["config"]
    config["backends"]["default"].append({"id": "b", "host": "10.0.0.2", "port": 81})
    put = call(site, "PUT", "/api/v1/config", {"config": config, "config_version": 1})
    assert put.status == 200, put.body
    assert put.json["config_version"] == 2
    assert [b.id for b in control.config.backends["default"]] == ["a", "b"]
    stale = call(site, "PUT", "/api/v1/config", {"config": config, "config_version": 1})
    assert stale.status == 409
    bad = call(site, "PUT", "/api/v1/config", {"server": {"port": "x"}})
    assert (bad.status, bad.json["field"]) == (400, "server.port")
    assert control.config_version == 2


def test_persist_without_a_file_is_refused(site) -> None:
    answer = call(site, "PUT", "/api/v1/config", {"persist": True})
    assert (answer.status, answer.json["field"]) == (400, "persist")


def test_apply_failures(site, control) -> None:
    control.fail_with = RuntimeError("worker 1: refused")
    answer = call(site, "POST", "/api/v1/backends/add", {"upstream": "default", "id": "b", "host": "h", "port": 1})
    assert answer.status == 500
    assert answer.json["error"] == "apply_failed"
    assert answer.json["config_version"] == 1
    assert answer.json["applied"] is False
    assert "worker 1: refused" in answer.json["detail"]
    control.fail_with = ValueError("the stats segment has room for 256 backends")
    answer = call(site, "POST", "/api/v1/backends/add", {"upstream": "default", "id": "b", "host": "h", "port": 1})
    assert (answer.status, answer.json["error"]) == (409, "no_room")


def test_backend_calls(site, control) -> None:
    added = call(site, "POST", "/api/v1/backends/add", {"upstream": "default", "backend": {"id": "b", "host": "h", "port": 1}})
    assert added.status == 200
    assert added.json["backend"] == {"id": "b", "host": "h", "port": 1, "weight": 100, "scheme": "http",
                                     "active": True, "max_conn": 1000}
    updated = call(site, "PUT", "/api/v1/backends/update", {"upstream": "default", "id": "b", "weight": 3})
    assert (updated.status, updated.json["backend"]["weight"]) == (200, 3)
    nested = call(site, "PUT", "/api/v1/backends/update",
                  {"upstream": "default", "backend_id": "b", "changes": {"max_conn": 9}})
    assert nested.json["backend"]["max_conn"] == 9
    listing = call(site, "GET", "/api/v1/backends?upstream=default")
    assert [row["id"] for row in listing.json["backends"]] == ["a", "b"]
    assert listing.json["backends"][1]["healthy"] is True
    removed = call(site, "DELETE", "/api/v1/backends/remove?upstream=default&backend_id=b")
    assert removed.status == 200
    assert [b.id for b in control.config.backends["default"]] == ["a"]
    # A removed backend can still be disconnected.
    cut = call(site, "POST", "/api/v1/backends/disconnect", {"upstream": "default", "backend_id": "b"})
    assert (cut.status, cut.json["closed"], cut.json["closed_per_worker"]) == (200, 3, [2, 1])
    assert call(site, "POST", "/api/v1/backends/disconnect?upstream=default&backend_id=q").status == 404
    assert control.config_version == 5


def test_report(site, control) -> None:
    answer = call(site, "POST", "/api/v1/report", {"backend_id": "a", "cpu_usage": 50, "memory_usage": 20})
    assert answer.status == 200
    assert answer.json["reported_load"] == 0.4
    assert control.loads == [("default", "a", 0.4)]
    only_load = call(site, "POST", "/api/v1/report", {"backend_id": "a", "load_avg_1": 3})
    assert only_load.json["reported_load"] == 0.0  # a load average needs cpu_count


def test_gate_api_key(control) -> None:
    control.config = parse_config(CONFIG + "admin: {api_key: k3y}\n")
    site = admin_site(control, environ={})
    site.timeOut = None
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        missing = call(site, "GET", "/api/v1/config")
        wrong = call(site, "POST", "/api/v1/backends/add", {}, headers={"X-API-Key": "nope"})
        good = call(site, "GET", "/api/v1/config", headers={"X-API-Key": "k3y"})
        unknown = call(site, "GET", "/whatever")
        health = call(site, "GET", "/health")
        metrics = call(site, "GET", "/metrics")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert (missing.status, missing.json["error"], missing.json["reason"]) == (401, "unauthorized", "missing_key")
    assert (wrong.status, wrong.json["reason"]) == (401, "wrong_key")
    assert good.status == 200
    assert unknown.status == 401
    assert health.status == 200
    assert metrics.body == b"# nothing\n"
    lines = [e["line"] for e in events if e.get("log_namespace") == "speedproxy.audit"]
    assert len(lines) == 3
    assert "method=GET path=/api/v1/config outcome=denied status=401 reason=missing_key" in lines[0]
    assert "method=POST path=/api/v1/backends/add outcome=denied status=401 reason=wrong_key" in lines[1]
    assert "path=/whatever" in lines[2]
    assert not any("k3y" in line for line in lines)


@pytest.mark.parametrize("chunked", [False, True])
def test_body_limit(control, chunked) -> None:
    control.config = parse_config(CONFIG + "admin: {max_body_size: 1KiB}\n")
    site = admin_site(control, environ={})
    site.timeOut = None
    big = {"upstream": "default", "id": "x" * 2000, "host": "h", "port": 1}
    answer = call(site, "POST", "/api/v1/backends/add", big, chunked=chunked)
    assert (answer.status, answer.json["error"]) == (413, "payload_too_large")
    small = call(site, "POST", "/api/v1/backends/add", {"upstream": "default", "id": "x", "host": "h", "port": 1},
                 chunked=chunked)
    assert small.status == 200


def test_tree_errors_and_head(site) -> None:
    assert call(site, "GET", "/").status == 404
    assert call(site, "GET", "/api/v1/").status == 404
    assert call(site, "GET", "/status/").status == 200
    assert call(site, "GET", "/status/more").status == 404
    method = call(site, "PATCH", "/api/v1/config")
    assert (method.status, method.headers["allow"]) == (405, "GET, PUT")
    head = call(site, "HEAD", "/status")
    assert head.status == 200 and head.body == b""
    assert call(site, "POST", "/api/v1/report", raw=b"[").json["error"] == "bad_request"


def test_health_and_status(site, control) -> None:
    health = call(site, "GET", "/health")
    assert (health.status, health.json["status"]) == (200, "healthy")
    control.config = parse_config(CONFIG.replace("{id: a, host: 10.0.0.1, port: 80}", "{id: a, host: h, port: 1, active: false}"))
    down = call(site, "GET", "/health")
    assert down.status == 503
    assert down.json["reasons"] == ["route 'default': no healthy backend in upstream 'default'"]
    control.inspect_workers = lambda *a: succeed([])  # type: ignore[assignment]
    assert "no worker is serving" in call(site, "GET", "/health").json["reasons"]
    status = call(site, "GET", "/status").json
    assert status["mode"] == "master" and status["api_key_required"] is False


def test_cache_and_thresholds(site, control) -> None:
    assert call(site, "GET", "/cache/info").json["enabled"] is False
    assert call(site, "DELETE", "/cache/clear").json["field"] == "confirm"
    assert call(site, "POST", "/cache/clear", {"confirm": "yes"}).json["cleared"] == 0
    answer = call(site, "PUT", "/api/v1/performance/alerts/thresholds", {"slow_request_threshold": "2s", "error_rate": 0.5})
    assert answer.status == 200, answer.body
    assert control.config.server.slow_request_threshold == 2.0
    assert answer.json["thresholds"]["error_rate"] == 0.5


def test_resource_usage_waits_on_the_clock(site, control) -> None:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9901))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /api/v1/performance/resource-usage?interval=0.5 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert transport.value() == b""
    site.api.clock.advance(0.5)
    answer = Response(transport.value())
    assert answer.status == 200
    assert answer.json["processes"][0]["pid"] == os.getpid()
    assert answer.json["processes"][0]["rss_bytes"] > 0
