"""Requests wait for a backend slot when every backend is at ``max_conn`` (:mod:`speedproxy.proxy.backlog`)."""

from __future__ import annotations

from typing import Dict, List, Tuple

import pytest
from twisted.internet.task import Clock

from speedproxy.config import parse_config
from speedproxy.proxy.backlog import Backlog
from speedproxy.stats.reader import StatsReader
from speedproxy.testing import InMemoryClient, InMemoryProxy
from speedproxy.upstreams import UpstreamGroup

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _config(server: str = "", max_conn: int = 1, backends: int = 1) -> str:
    members = ", ".join(
        f"{{id: b{i + 1}, host: 10.1.0.{i + 1}, port: 8081, max_conn: {max_conn}}}" for i in range(backends)
    )
    return (
        f"server: {{{server}}}\n"
        f"backends:\n  default: [{members}]\n"
        "routing:\n  default: {path: /, upstream: default, load_balancer: round_robin}\n"
    )


def _get(harness: InMemoryProxy, path: str) -> InMemoryClient:
    client = harness.client()
    client.send(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode())
    return client


def _waiting(harness: InMemoryProxy) -> int:
    return len(harness.core.groups["default"].waiting)


def _row(harness: InMemoryProxy) -> Dict[str, object]:
    core = harness.core
    reader = StatsReader(core.shared.segment)
    slots = reader.slots()
    (row,) = reader.upstream_rows(core.config, core.stats_index, slots, reader.totals(slots))  # type: ignore[arg-type]
    return row


class _Lines:
    """An access log keeping its lines."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_request_waits_for_the_slot_and_requests_are_served_in_order() -> None:
    harness = InMemoryProxy(_config())
    first = _get(harness, "/1")
    backend = harness.accept()
    assert backend.take().startswith(b"GET /1 ")
    second = _get(harness, "/2")
    third = _get(harness, "/3")
    assert _waiting(harness) == 2 and _row(harness)["queue"] == 2
    assert second.received() == b"" and third.received() == b""
    assert harness.pending_connects() == 0

    backend.send(OK)
    assert first.response().status == 200
    harness.reactor.advance(0)  # the head is served once the finished request is put away
    assert backend.take().startswith(b"GET /2 ")  # on the connection the first one freed
    assert _waiting(harness) == 1
    backend.send(OK)
    assert second.response().status == 200
    harness.reactor.advance(0)
    assert backend.take().startswith(b"GET /3 ")
    backend.send(OK)
    assert third.response().status == 200
    assert _waiting(harness) == 0
    row = _row(harness)
    assert (row["queue"], row["queued"], row["queue_full"], row["queue_timeouts"]) == (0, 2, 0, 0)
    assert len(harness.reactor.tcpClients) == 1


def test_a_new_request_queues_behind_the_waiting_ones() -> None:
    harness = InMemoryProxy(_config())
    first = _get(harness, "/1")
    backend = harness.accept()
    backend.take()
    second = _get(harness, "/2")
    backend.send(OK)  # the slot is free, but /2 has not been served yet
    assert first.response().status == 200
    late = _get(harness, "/late")
    assert _waiting(harness) == 2
    harness.reactor.advance(0)
    assert backend.take().startswith(b"GET /2 ")
    backend.send(OK)
    assert second.response().status == 200
    harness.reactor.advance(0)
    assert backend.take().startswith(b"GET /late ")


def test_the_queue_timeout_answers_503() -> None:
    harness = InMemoryProxy(_config("queue_timeout: 300ms"))
    _get(harness, "/1")
    harness.accept()
    waiting = _get(harness, "/2")
    harness.reactor.advance(0.29)
    assert waiting.received() == b""
    harness.reactor.advance(0.02)
    response = waiting.response()
    assert response.status == 503
    body = response.json()
    assert body["error"] == "queue_timeout"
    assert "server.queue_timeout" in body["detail"]
    assert body["request_id"] == response.header(b"x-request-id").decode()
    assert not waiting.closed  # keep-alive: the client may try again
    assert _waiting(harness) == 0
    assert _row(harness)["queue_timeouts"] == 1


def test_a_full_queue_answers_503_at_once() -> None:
    harness = InMemoryProxy(_config("queue_size: 1"))
    _get(harness, "/1")
    harness.accept()
    _get(harness, "/2")
    third = _get(harness, "/3")
    response = third.response()
    assert response.status == 503
    assert response.json()["error"] == "queue_full"
    assert _waiting(harness) == 1
    assert _row(harness)["queue_full"] == 1


@pytest.mark.parametrize("setting", ["queue_timeout: 0s", "queue_size: 0"])
def test_no_queue_answers_503_at_once(setting: str) -> None:
    harness = InMemoryProxy(_config(setting))
    _get(harness, "/1")
    harness.accept()
    response = _get(harness, "/2").response()
    assert response.status == 503
    assert response.json()["error"] == "no_backend_available"


def test_a_client_that_leaves_leaves_the_queue() -> None:
    harness = InMemoryProxy(_config())
    first = _get(harness, "/1")
    backend = harness.accept()
    backend.take()
    gone = _get(harness, "/gone")
    kept = _get(harness, "/kept")
    gone.lose()
    assert _waiting(harness) == 1 and _row(harness)["queue"] == 1
    backend.send(OK)
    assert first.response().status == 200
    harness.reactor.advance(0)
    assert backend.take().startswith(b"GET /kept ")
    backend.send(OK)
    assert kept.response().status == 200
    assert harness.backend("b1").requests == 2


def test_a_slot_freed_elsewhere_is_found_by_polling() -> None:
    # Another worker's request holds the only slot (in-flight counts are shared).
    harness = InMemoryProxy(_config())
    other = harness.backend("b1")
    other.active_connections = 1
    waiting = _get(harness, "/w")
    assert _waiting(harness) == 1 and harness.pending_connects() == 0
    other.active_connections = 0  # freed in the other worker: nothing tells us
    harness.reactor.advance(0.05)
    assert harness.pending_connects() == 1
    backend = harness.accept()
    assert backend.take().startswith(b"GET /w ")
    backend.send(OK)
    assert waiting.response().status == 200


def test_waiting_requests_get_503_when_every_backend_goes_down() -> None:
    harness = InMemoryProxy(_config())
    _get(harness, "/1")
    harness.accept()
    waiting = _get(harness, "/2")
    harness.core.set_backend_health("default", "b1", False)
    harness.reactor.advance(0.05)
    response = waiting.response()
    assert response.status == 503
    assert response.json()["error"] == "no_backend_available"


def test_no_queue_when_no_backend_may_serve() -> None:
    harness = InMemoryProxy(_config())
    harness.core.set_backend_health("default", "b1", False)
    response = _get(harness, "/").response()
    assert response.json()["error"] == "no_backend_available"
    assert _row(harness)["queued"] == 0


def test_overflow_goes_to_a_backend_with_room_before_queueing() -> None:
    harness = InMemoryProxy(_config(backends=2))
    _get(harness, "/1")
    _get(harness, "/2")
    assert harness.pending_connects() == 2
    _get(harness, "/3")
    assert _waiting(harness) == 1


def test_a_request_body_waits_with_its_request() -> None:
    harness = InMemoryProxy(_config())
    first = _get(harness, "/1")
    backend = harness.accept()
    backend.take()
    poster = harness.client()
    poster.send(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhel")
    poster.send(b"lo")
    backend.send(OK)
    assert first.response().status == 200
    harness.reactor.advance(0)
    sent = backend.take()
    assert sent.startswith(b"POST /p ") and sent.endswith(b"\r\n\r\nhello")
    backend.send(OK)
    assert poster.response().status == 200


def test_the_access_log_has_the_time_spent_queued() -> None:
    harness = InMemoryProxy(_config())
    log = _Lines()
    harness.core.access_log = log
    first = _get(harness, "/1")
    backend = harness.accept()
    backend.take()
    second = _get(harness, "/2")
    harness.reactor.advance(0.25)
    backend.send(OK)
    assert first.response().status == 200
    harness.reactor.advance(0)
    backend.send(OK)
    assert second.response().status == 200
    direct, queued = log.lines
    assert " qt=" not in direct
    assert " rt=0.250 qt=0.250 upstream=10.1.0.1:8081 " in queued


def test_a_reload_keeps_the_waiting_requests() -> None:
    harness = InMemoryProxy(_config())
    _get(harness, "/1")
    backend = harness.accept()
    backend.take()
    waiting = _get(harness, "/2")
    harness.core.apply_config(parse_config(_config("queue_timeout: 10s", max_conn=2)))
    harness.reactor.advance(0.05)  # max_conn went up: polled and served
    assert backend.take() == b"" and harness.pending_connects() == 1
    second = harness.accept()
    assert second.take().startswith(b"GET /2 ")
    second.send(OK)
    assert waiting.response().status == 200


# -- the Backlog alone, with stand-in waiters ---------------------------------------------


class _Waiter:
    """Takes a slot when ``free`` says so; records how it left."""

    def __init__(self, name: str, free: List[bool], log: List[str]) -> None:
        self.name = name
        self.free = free
        self.log = log
        self.waiting = None
        self.queued_at = -1.0
        self.queue_time = 0.0

    def queue_turn(self) -> bool:
        if not self.free[0]:
            return False
        self.waiting.remove(self)  # type: ignore[union-attr]
        self.log.append("served " + self.name)
        return True

    def queue_timed_out(self) -> None:
        self.waiting.remove(self)  # type: ignore[union-attr]
        self.log.append("timed out " + self.name)


def _backlog(timeout: float = 1.0, size: int = 10) -> Tuple[Clock, UpstreamGroup, Backlog]:
    clock = Clock()
    group = UpstreamGroup("g")
    backlog = Backlog(clock, group)
    backlog.configure(timeout, size)
    return clock, group, backlog


def test_backlog_serves_in_order_and_polls_while_requests_wait() -> None:
    clock, group, backlog = _backlog()
    free, log = [False], []
    waiters = [_Waiter(name, free, log) for name in "abc"]
    assert all(backlog.enqueue(w) for w in waiters)
    assert len(backlog) == 3 and len(clock.getDelayedCalls()) == 1
    clock.advance(backlog.poll_interval)
    assert log == []  # no slot yet: polled, still waiting
    free[0] = True
    clock.advance(backlog.poll_interval)
    assert log == ["served a", "served b", "served c"]
    assert not group.waiting and clock.getDelayedCalls() == []


def test_backlog_times_out_the_oldest_first_and_keeps_the_rest() -> None:
    clock, group, backlog = _backlog(timeout=0.3)
    free, log = [False], []
    first = _Waiter("first", free, log)
    backlog.enqueue(first)
    clock.advance(0.2)
    backlog.enqueue(_Waiter("second", free, log))
    clock.pump([0.05] * 2)
    assert log == ["timed out first"]
    assert [w.name for w in group.waiting] == ["second"]
    clock.pump([0.05] * 3)
    assert log == ["timed out first"]
    clock.pump([0.05] * 2)  # 0.3 s after it joined, give or take a float rounding
    assert log == ["timed out first", "timed out second"]


def test_backlog_refuses_beyond_its_size_and_forgets_a_removed_waiter() -> None:
    clock, group, backlog = _backlog(size=2)
    free, log = [False], []
    a, b, c = (_Waiter(name, free, log) for name in "abc")
    assert backlog.enqueue(a) and backlog.enqueue(b)
    assert not backlog.enqueue(c) and c.waiting is None
    backlog.remove(a)  # its client left
    assert [w.name for w in group.waiting] == ["b"] and a.waiting is None
    backlog.remove(a)  # twice is harmless
    backlog.remove(b)
    assert clock.getDelayedCalls() == []  # nothing waits: no timer


def test_slot_freed_serves_soon_not_now() -> None:
    clock, group, backlog = _backlog()
    free, log = [True], []
    backlog.enqueue(_Waiter("a", free, log))
    backlog.slot_freed()
    assert log == []
    clock.advance(0)
    assert log == ["served a"]


def test_stop_cancels_the_timer() -> None:
    clock, group, backlog = _backlog()
    backlog.enqueue(_Waiter("a", [False], []))
    backlog.stop()
    assert clock.getDelayedCalls() == []
