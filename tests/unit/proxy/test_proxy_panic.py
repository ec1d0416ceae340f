"""Panic routing in a worker's data path: passive checks never empty a group (:mod:`speedproxy.panic`)."""

from __future__ import annotations

from typing import List

from twisted.logger import capturedLogs

from speedproxy.config import parse_config
from speedproxy.stats.reader import StatsReader
from speedproxy.testing import InMemoryClient, InMemoryProxy

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

ONE = """\
server: {panic_threshold: %s}
backends:
  default: [{id: b1, host: 10.1.0.1, port: 8081}]
routing:
  default: {path: /, upstream: default, load_balancer: round_robin}
"""

THREE = """\
backends:
  default:
    - {id: b1, host: 10.1.0.1, port: 8081}
    - {id: b2, host: 10.1.0.2, port: 8081}
    - {id: b3, host: 10.1.0.3, port: 8081}
routing:
  default: {path: /, upstream: default, load_balancer: round_robin}
"""


def _get(harness: InMemoryProxy, path: str = "/") -> InMemoryClient:
    client = harness.client()
    client.send(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode())
    return client


def _drop(harness: InMemoryProxy) -> InMemoryClient:
    """A request whose backend closes the connection without answering."""
    client = _get(harness)
    harness.accept().close()
    return client


def _panic_word(harness: InMemoryProxy) -> bool:
    core = harness.core
    reader = StatsReader(core.shared.segment)
    slots = reader.slots()
    (row,) = reader.upstream_rows(core.config, core.stats_index, slots, reader.totals(slots))  # type: ignore[arg-type]
    return bool(row["panic"])


def test_the_only_backend_still_gets_requests_after_passive_failures() -> None:
    harness = InMemoryProxy(ONE % "50%")
    for _ in range(3):
        assert _drop(harness).response().status == 502
    backend = harness.backend("b1")
    assert backend.down_until > 0  # the passive check took it out...
    assert harness.core.groups["default"].panic  # ...and the group ignores that
    client = _get(harness)
    assert harness.pending_connects() == 1
    upstream = harness.accept()
    assert upstream.take().startswith(b"GET / ")
    upstream.send(OK)
    assert client.response().status == 200


def test_panic_threshold_0_still_keeps_a_groups_only_backend() -> None:
    harness = InMemoryProxy(ONE % "0")
    for _ in range(3):
        _drop(harness)
    client = _get(harness)
    harness.accept().send(OK)
    assert client.response().status == 200


def test_below_the_threshold_passively_down_backends_get_traffic_again() -> None:
    harness = InMemoryProxy(THREE)
    core = harness.core
    now = harness.reactor.seconds()
    harness.backend("b1").mark_down(now + 10)
    assert not core.groups["default"].panic  # 2 of 3 still in
    for _ in range(4):
        _get(harness)
    assert {host for host, _ in harness.connects} == {"10.1.0.2", "10.1.0.3"}
    harness.backend("b2").mark_down(now + 10)
    assert core.groups["default"].panic
    for _ in range(3):
        _get(harness)
    assert {host for host, _ in harness.connects[4:]} == {"10.1.0.1", "10.1.0.2", "10.1.0.3"}


def test_a_backend_the_active_check_called_down_stays_out_in_panic() -> None:
    harness = InMemoryProxy(THREE)
    core = harness.core
    now = harness.reactor.seconds()
    core.set_backend_health("default", "b1", False)
    harness.backend("b2").mark_down(now + 10)
    harness.backend("b3").mark_down(now + 10)
    assert core.groups["default"].panic
    for _ in range(6):
        _get(harness)
    assert {host for host, _ in harness.connects} == {"10.1.0.2", "10.1.0.3"}


def test_every_backend_down_by_active_checks_is_503_at_once() -> None:
    harness = InMemoryProxy(ONE % "50%")
    for _ in range(3):
        _drop(harness)
    harness.core.set_backend_health("default", "b1", False)
    connects = len(harness.connects)
    response = _get(harness).response()
    assert response.status == 503
    assert response.json()["error"] == "no_backend_available"
    assert len(harness.connects) == connects


def test_housekeeping_exports_and_logs_panic_once_per_change() -> None:
    harness = InMemoryProxy(THREE)
    core = harness.core
    now = harness.reactor.seconds()
    messages: List[str] = []
    with capturedLogs() as events:
        core.housekeeping(now)
        assert not _panic_word(harness)
        for backend_id in ("b1", "b2"):
            harness.backend(backend_id).mark_down(now + 10)
        core.housekeeping(now + 0.25)
        core.housekeeping(now + 0.5)
        assert _panic_word(harness)
        core.housekeeping(now + 11)  # the down periods are over: half open
        assert not _panic_word(harness)
        messages = [event["message"] for event in events if event.get("log_namespace") == "speedproxy.upstreams"]
    assert len(messages) == 2, messages
    assert messages[0].startswith("upstream default: entering panic: 1 of 3 backends healthy by passive checks")
    assert messages[1].startswith("upstream default: leaving panic: 3 of 3")


def test_a_verdict_from_another_worker_counts_towards_panic() -> None:
    harness = InMemoryProxy(ONE % "50%")
    core = harness.core
    backend = harness.backend("b1")
    now = harness.reactor.seconds() + 100
    core.shared.set_down_until(backend.stats_index, now + 5)  # as if another worker wrote it
    backend.down_until = 0.0
    core.housekeeping(now)
    assert backend.down_until == now + 5
    assert core.groups["default"].panic and _panic_word(harness)


def test_a_reload_takes_the_threshold_from_the_backends_health_check() -> None:
    harness = InMemoryProxy(THREE)
    group = harness.core.groups["default"]
    assert group.panic_threshold == 50.0
    harness.core.apply_config(
        parse_config(THREE.replace("port: 8081}", "port: 8081, health_check: {panic_threshold: 80%}}", 1))
    )
    assert group.panic_threshold == 80.0
    harness.backend("b1").mark_down(harness.reactor.seconds() + 10)
    assert group.panic  # 2 of 3 = 67% < 80%
