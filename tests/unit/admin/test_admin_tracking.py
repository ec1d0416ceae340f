"""Tests for :mod:`speedproxy.admin.tracking` (worker-side bookkeeping)."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from twisted.internet.testing import MemoryReactorClock

from speedproxy.admin.tracking import (
    RemovedBackends,
    RequestTracker,
    disconnect_backend,
    inspect_core,
    set_reported_load,
)
from speedproxy.config import parse_config
from speedproxy.proxy.core import ProxyCore

CONFIG = """\
server: {slow_request_threshold: 500ms}
backends:
  default:
    - {id: a, host: 10.0.0.1, port: 80}
    - {id: b, host: 10.0.0.2, port: 80}
routing:
  default: {path: /, upstream: default, load_balancer: round_robin}
"""


class FakeRequest:
    def __init__(self, target: bytes = b"/x", upgrade: Optional[bytes] = None, event_stream: bool = False) -> None:
        self.method = b"GET"
        self.target = target
        self.version = b"HTTP/1.1"
        self.host = b"example.com"
        self.upgrade = upgrade
        self.event_stream = event_stream

    def header(self, name: bytes) -> Optional[bytes]:
        return None


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class FakeUpstream:
    def __init__(self) -> None:
        self.transport = FakeTransport()


class FakeExchange:
    def __init__(self, core: ProxyCore, backend: Any, request: Optional[FakeRequest] = None) -> None:
        self.core = core
        self.request = request or FakeRequest()
        self.started = core.clock.seconds()
        self.tried = [backend]
        self.backend = backend
        self.route = core.routes[0]
        self.request_id = b"abcd-1"
        self.client_ip = "192.0.2.1"
        self.bytes_sent = 10
        self.head_bytes = 5
        self.bytes_received = 40
        self.status = 0
        self.response_started = False
        self.upstream: Optional[FakeUpstream] = FakeUpstream()
        self.operator_cut = False

    def cut_by_operator(self) -> None:
        self.operator_cut = True
        if self.upstream is not None:
            self.upstream.transport.abortConnection()


class FakeClient:
    def __init__(self, exchange: Optional[FakeExchange]) -> None:
        self.exchange = exchange


@pytest.fixture
def core() -> ProxyCore:
    return ProxyCore(MemoryReactorClock(), parse_config(CONFIG))


def _backend(core: ProxyCore, backend_id: str) -> Any:
    return core.groups["default"].get(backend_id)


def test_tracker_keeps_requests_over_the_threshold(core) -> None:
    tracker = RequestTracker(core, keep=2, wall=lambda: 1000.0)
    clock = core.reactor
    for seconds, target in ((0.1, b"/fast"), (0.6, b"/slow"), (2.0, b"/slower"), (0.7, b"/third")):
        exchange = FakeExchange(core, _backend(core, "a"), FakeRequest(target))
        clock.advance(seconds)
        core.log_exchange(exchange, 200)  # the wrapped method
    assert core.requests_served == 4  # the original still ran
    assert tracker.slow_total == 3
    assert [row["path"] for row in tracker.slow] == ["/slower", "/third"]  # bounded
    row = tracker.slow[0]
    assert row["duration_ms"] == 2000.0
    assert (row["backend_id"], row["upstream"], row["route"], row["status"]) == ("a", "default", "default", 200)
    assert row["time"] == 1000.0


def test_long_lived_requests_are_not_slow(core) -> None:
    tracker = RequestTracker(core)
    for request in (FakeRequest(upgrade=b"websocket"), FakeRequest(event_stream=True)):
        exchange = FakeExchange(core, _backend(core, "a"), request)
        core.reactor.advance(5.0)
        core.log_exchange(exchange, 200)
    assert tracker.slow_total == 0


def test_threshold_follows_the_config(core) -> None:
    tracker = RequestTracker(core)
    core.apply_config(parse_config(CONFIG.replace("500ms", "5s")))
    exchange = FakeExchange(core, _backend(core, "a"))
    core.reactor.advance(1.0)
    core.log_exchange(exchange, 200)
    assert tracker.slow_total == 0


def test_inspect_core_lists_in_flight_requests_oldest_first(core) -> None:
    tracker = RequestTracker(core)
    first = FakeExchange(core, _backend(core, "a"), FakeRequest(b"/first"))
    core.reactor.advance(1.0)
    second = FakeExchange(core, _backend(core, "b"), FakeRequest(b"/second"))
    core.clients.update({FakeClient(second), FakeClient(first), FakeClient(None)})  # type: ignore[arg-type]
    _backend(core, "b").reported_load = 0.5
    report = inspect_core(core, tracker, slot=3, version=7, active_limit=1, slow_limit=5)
    assert (report["slot"], report["config_version"], report["serving"]) == (3, 7, True)
    assert report["active_count"] == 2
    assert [row["path"] for row in report["active"]] == ["/first"]
    assert report["active"][0]["age_ms"] == 1000.0
    assert report["connections"] == 3
    assert report["backends"]["default"]["b"]["reported_load"] == 0.5
    assert report["slow_threshold_ms"] == 500.0
    assert inspect_core(None, None, slot=0, version=0, active_limit=5, slow_limit=5)["serving"] is False


def test_set_reported_load_clamps(core) -> None:
    assert set_reported_load(core, "default", "a", 1.7)
    assert _backend(core, "a").reported_load == 1.0
    assert set_reported_load(core, "default", "a", -1)
    assert _backend(core, "a").reported_load == 0.0
    assert not set_reported_load(core, "default", "zz", 0.5)
    assert not set_reported_load(None, "default", "a", 0.5)


def test_disconnect_reaches_a_removed_backend(core) -> None:
    removed = RemovedBackends()
    backend_b = _backend(core, "b")
    in_flight = FakeExchange(core, backend_b)
    other = FakeExchange(core, _backend(core, "a"))
    core.clients.update({FakeClient(in_flight), FakeClient(other)})  # type: ignore[arg-type]
    new_config = parse_config(CONFIG.replace("    - {id: b, host: 10.0.0.2, port: 80}\n", ""))
    removed.before_apply(core, new_config)
    core.apply_config(new_config)
    assert core.groups["default"].get("b") is None
    assert disconnect_backend(core, removed, "default", "b") == 1
    assert in_flight.upstream.transport.aborted
    assert in_flight.operator_cut
    assert not other.upstream.transport.aborted
    assert disconnect_backend(core, removed, "default", "zz") == 0
    # Re-adding it forgets the removal.
    removed.before_apply(core, parse_config(CONFIG))
    assert ("default", "b") not in removed.backends


def test_removed_backends_are_bounded(core) -> None:
    removed = RemovedBackends(keep=1)
    removed.before_apply(core, parse_config("backends: {default: []}\nrouting: {default: {upstream: default}}"))
    assert list(removed.backends) == [("default", "b")]
