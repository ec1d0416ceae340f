"""Backend failures end to end: retries, passive and active health checks.

A killed backend is an :class:`~speedproxy.testing.HTTPBackend` that was
stopped (its port refuses connections); a restarted one is a new backend on
the same port.  Attempts towards a dead backend are counted from the
admin ``/stats`` (``backends[].requests`` counts every attempt, in every
worker).  Two workers everywhere: the real process model.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Dict, List

import pytest

from speedproxy.testing import RawClient, RawResponse, backend_entry, free_port, read_request_head, wait_until

from balancing_support import Load, attempts, backend_stats, fixed_port_backend, proxied

SERVER: Dict[str, Any] = {"workers": 2, "access_log": "off", "upstream_connect_timeout": "1s",
                          "upstream_read_timeout": "5s"}

#: The active check of the issue, on every backend.
ACTIVE = {"path": "/health", "interval": "1s", "timeout": "500ms", "failures": 2, "successes": 2}
#: Passive checks only: the active probe runs once at start, then not within a test.
PASSIVE_ONLY = {"interval": "300s"}


def _config(entries: List[Dict[str, Any]], balancer: str = "round_robin") -> Dict[str, Any]:
    return {
        "backends": {"default": entries},
        "routing": {"default": {"path": "/", "upstream": "default", "load_balancer": balancer}},
    }


def _get(proxy, path: str = "/", method: str = "GET", body: bytes = b"", timeout: float = 5.0) -> RawResponse:
    with RawClient(*proxy.address, timeout=timeout) as client:
        client.request(method, path, body=body)
        return client.read_response()


def _assert_json_error(response: RawResponse, statuses=(502, 503)) -> Dict[str, Any]:
    assert response.status in statuses, (response.status, response.body[:300])
    assert (response.header("Content-Type") or "").startswith("application/json")
    body = response.json()
    assert set(body) >= {"error", "detail", "request_id"} and body["error"] and body["detail"], body
    assert body["request_id"] == response.header("X-Request-Id"), (body, response.headers)
    return body


# -- a backend killed under load ---------------------------------------------------------------


def test_killed_backend_under_load_costs_no_get_errors(stack) -> None:
    backends = [stack.backend(name=name) for name in ("a", "b", "c")]
    proxy = stack.proxy(config=_config([backend_entry(b, id=b.name, health_check=ACTIVE) for b in backends]), **SERVER)
    victim = backends[2]
    load = Load(proxy.address, threads=4, pace=0.01).start()
    try:
        wait_until(lambda: len(proxied(victim)) >= 10, 10.0, "traffic on the victim")
        killed_at = time.monotonic()
        victim.stop()
        stopped_at = time.monotonic()
        # Requests that finished after the kill but started before it do not count.
        wait_until(
            lambda: len([r for r in load.snapshot() if r.started >= stopped_at]) >= 200,
            15.0,
            "200 requests started after the kill",
        )
    finally:
        results = load.stop()
    after = [r for r in results if r.started >= stopped_at]
    during = [r for r in results if killed_at <= r.finished and r.started < stopped_at]
    assert len(after) >= 200
    bad = [r for r in after if not r.ok]
    assert not bad, f"{len(bad)} GETs failed after the kill, e.g. {bad[:3]}"
    assert {r.backend for r in after} == {"a", "b"}
    # Only a request the victim was answering at the very moment it died may be cut.
    assert len([r for r in during if not r.ok]) <= 1, [r for r in during if not r.ok]
    assert all(r.ok for r in results if r.finished < killed_at)


# -- the active health check --------------------------------------------------------------------


def _last_increase(proxy, backend_id: str, quiet: float, timeout: float) -> float:
    """Poll ``/stats`` until attempts to ``backend_id`` stay flat for ``quiet`` s; when they last grew."""
    deadline = time.monotonic() + timeout
    last_value = attempts(proxy, backend_id)
    last_change = time.monotonic()
    while True:
        now = time.monotonic()
        value = attempts(proxy, backend_id)
        if value != last_value:
            last_value, last_change = value, now
        elif now - last_change >= quiet:
            return last_change
        if now >= deadline:
            raise TimeoutError(f"attempts to {backend_id} still growing after {timeout}s ({value})")
        time.sleep(0.05)


@pytest.mark.parametrize(
    "passive",
    [
        # Passive checks off: only the active check can take the backend out.
        pytest.param({"passive_failures": 0}, id="active-only"),
        # The exact block, passive defaults (3 failures, 10 s out) included:
        # the passive verdict must not keep a backend out once the active check
        # saw it come back.
        pytest.param({}, id="passive-defaults"),
    ],
)
def test_active_check_marks_down_within_interval_x_failures_and_up_within_interval_x_successes(
    stack, passive: Dict[str, Any]
) -> None:
    check = dict(ACTIVE, **passive)
    backends = [stack.backend(name=name) for name in ("a", "b", "c")]
    proxy = stack.proxy(config=_config([backend_entry(b, id=b.name, health_check=check) for b in backends]), **SERVER)
    first, _, victim = backends
    port = victim.port

    # Probes reach the backends, from the master only: about one per interval, not one per worker.
    probes = lambda: [r for r in list(first.requests) if r.path == "/health"]  # noqa: E731
    wait_until(lambda: len(probes()) >= 2, 3.5, "two active probes of /health")
    window_start, counted = time.monotonic(), len(probes())
    load = Load(proxy.address, threads=3, pace=0.02).start()
    try:
        wait_until(lambda: len(proxied(victim)) >= 5, 10.0, "traffic on the victim")
        victim.stop()
        killed_at = time.monotonic()
        down_at = _last_increase(proxy, "c", quiet=1.2, timeout=8.0)
        assert down_at - killed_at <= 2.0 + 0.6, f"marked down {down_at - killed_at:.2f}s after the kill"
        if not passive:
            # The passive check stopped traffic at once; the active verdict is
            # only visible in the log (HealthMonitor: "backend default/c is now DOWN").
            proxy.wait_for_log("default/c is now DOWN", max(0.1, killed_at + 2.6 - time.monotonic()))

        returned = stack.backends[stack.backends.index(victim)] = fixed_port_backend(port, name="c")
        restarted_at = time.monotonic()
        wait_until(lambda: proxied(returned), 5.0, "traffic on the restarted backend (still held out by a passive verdict?)")
        back_at = time.monotonic()
        assert back_at - restarted_at <= 2.0 + 0.6, f"traffic again {back_at - restarted_at:.2f}s after the restart"
        # It had to pass `successes` probes, one interval apart.
        assert back_at - restarted_at >= 0.8, f"taken back after {back_at - restarted_at:.2f}s: no rise count"
        assert [r.path for r in returned.requests[:2]] == ["/health", "/health"], returned.requests[:3]
    finally:
        load.stop()
    elapsed = time.monotonic() - window_start
    assert len(probes()) - counted <= elapsed / 1.0 + 2, f"{len(probes()) - counted} probes in {elapsed:.1f}s"


# -- everything down ---------------------------------------------------------------------------


def test_all_backends_down_answers_json_promptly(stack) -> None:
    backends = [stack.backend(name=name) for name in ("a", "b")]
    proxy = stack.proxy(*backends, **SERVER)
    assert _get(proxy).status == 200
    for backend in backends:
        backend.stop()
    statuses = []
    for index in range(8):
        started = time.monotonic()
        response = _get(proxy, f"/down{index}")
        took = time.monotonic() - started
        assert took < 2.0, f"request {index} took {took:.2f}s"
        _assert_json_error(response)
        statuses.append(response.status)
    assert statuses[0] == 502, statuses


# -- passive checks ---------------------------------------------------------------------------


def test_passive_check_stops_attempts_after_failures_and_probes_after_unhealthy_timeout(stack) -> None:
    check = dict(PASSIVE_ONLY, passive_failures=2, unhealthy_timeout="2s")
    alive = stack.backend(name="alive")
    victim = stack.backend(name="victim")
    config = _config([backend_entry(alive, id="alive", health_check=check),
                      backend_entry(victim, id="victim", health_check=check)])
    # No idle upstream connections: every attempt at the dead backend is a fresh connect.
    proxy = stack.proxy(config=config, upstream_keepalive=0, **SERVER)
    port = victim.port
    for _ in range(6):
        assert _get(proxy).status == 200
    assert proxied(victim)
    victim.stop()
    base = attempts(proxy, "victim")

    durations = []
    marked = 0
    # When the attempts first reached passive_failures: the backend was taken
    # out no earlier than the request before (a worker's second failure is
    # one of them), so no probe can come before first_out - 0.5 s + 2 s.
    first_out = None
    for index in range(30):
        started = time.monotonic()
        response = _get(proxy, f"/p{index}")
        durations.append(time.monotonic() - started)
        assert response.status == 200 and response.json()["backend"] == "alive", response
        marked = attempts(proxy, "victim") - base
        if first_out is None and marked >= check["passive_failures"]:
            first_out = time.monotonic()
    assert first_out is not None, f"{marked} attempts at the dead backend"
    # passive_failures per worker at most (the verdict is shared through the stats segment).
    assert 2 <= marked <= 2 * SERVER["workers"], f"{marked} attempts at the dead backend"
    assert max(durations) < 0.5, durations
    for index in range(20):
        # Only while it is surely still out: past unhealthy_timeout (2s) a
        # request may probe it (a slow machine gets there within these 20;
        # counted from first_out, not from the last attempt, which another
        # worker may have made later than the one that took it out).
        if time.monotonic() - first_out > 1.2:
            break
        assert _get(proxy, f"/q{index}").status == 200
    assert attempts(proxy, "victim") - base == marked, "a backend taken out still gets attempts"

    # After unhealthy_timeout it gets probed by a request again (and fails again at once).
    def probed() -> bool:
        assert _get(proxy, "/probe").status == 200
        return attempts(proxy, "victim") - base > marked

    wait_until(probed, 4.0, "a probe of the dead backend")
    probed_after = time.monotonic() - first_out
    assert 2.0 - 0.6 <= probed_after <= 2.0 + 2.0, f"probed {probed_after:.2f}s after it was taken out"
    reprobe = attempts(proxy, "victim") - base - marked
    assert reprobe <= SERVER["workers"], f"{reprobe} attempts in one probe round"

    # Back on the same port: taken back at the next probe.
    returned = fixed_port_backend(port, name="victim")
    stack.backends.append(returned)
    wait_until(lambda: _get(proxy, "/back").status == 200 and proxied(returned), 5.0, "traffic on the returned backend")


# -- retries -------------------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 2])
def test_retries_are_bounded_when_every_backend_refuses(stack, retries: int) -> None:
    dead = [("127.0.0.1", free_port()) for _ in range(4)]
    check = dict(PASSIVE_ONLY, passive_failures=0)
    config = _config([backend_entry(d, id=f"d{i}", health_check=check) for i, d in enumerate(dead)])
    proxy = stack.proxy(config=config, retries=retries, **SERVER)
    count = 3
    for index in range(count):
        started = time.monotonic()
        response = _get(proxy, f"/r{index}")
        assert time.monotonic() - started < 2.0
        assert _assert_json_error(response, (502,))["error"] == "bad_gateway"

    def total() -> int:
        return sum(row["requests"] for row in backend_stats(proxy).values())

    assert total() == count * (1 + retries), backend_stats(proxy)
    assert sum(row["failures"] for row in backend_stats(proxy).values()) == count * (1 + retries)


# -- no retry of a POST whose body was sent --------------------------------------------------------


def test_post_is_not_retried_after_the_backend_dropped_it_but_get_is(stack) -> None:
    seen: List[bytes] = []
    lock = threading.Lock()

    def drop(sock: socket.socket, stopping: threading.Event) -> None:
        """Read one whole request, then close without answering."""
        data = read_request_head(sock)
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            piece = sock.recv(65536)
            if not piece:
                break
            body += piece
        with lock:
            seen.append(head.split(b"\r\n")[0] + b" body=%d" % len(body))

    dropper = stack.raw_backend(drop, name="dropper")
    fine = stack.backend(name="fine")
    # Weights 100:1: every first pick is the dropper, a retry can only go to `fine`.
    # No health_check block (no probes to tell apart); two failures stay under
    # the default passive_failures (3).
    config = _config([backend_entry(dropper, id="dropper", weight=100),
                      backend_entry(fine, id="fine", weight=1)], "weight")
    proxy = stack.proxy(config=config, **SERVER)

    body = b"x" * 4096
    started = time.monotonic()
    response = _get(proxy, "/post", method="POST", body=body)
    assert time.monotonic() - started < 2.0
    assert _assert_json_error(response, (502,))["error"] == "bad_gateway"
    assert seen == [b"POST /post HTTP/1.1 body=4096"], seen
    assert dropper.connections == 1
    assert not fine.requests, "the POST was retried on another backend"

    response = _get(proxy, "/get")
    assert response.status == 200 and response.json()["backend"] == "fine", response
    assert seen[1:] == [b"GET /get HTTP/1.1 body=0"], seen
    assert [r.path for r in fine.requests] == ["/get"]
