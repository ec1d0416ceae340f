"""Panic routing end to end: passive checks never empty a group, active ones still count.

A real ``twistd speedproxy`` in front of raw-socket backends that drop their
first connections without answering (three drops: the default
``passive_failures`` takes the backend out for ``unhealthy_timeout``, 10 s),
then answer.  What the client got, what each backend received, ``/metrics``
and the log are checked.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any, Dict, List, Tuple

import pytest
from speedproxy.testing import RawClient, RawResponse, backend_entry, echo, read_request_head, wait_until

from workers_support import metrics

SERVER: Dict[str, Any] = {"upstream_connect_timeout": "1s", "upstream_read_timeout": "5s"}


class Flaky:
    """A raw backend that closes its first ``drops`` requests unanswered, then answers 200."""

    def __init__(self, name: str, drops: int = 3) -> None:
        self.name = name
        self.drops_left = drops
        #: ``(path, answered)`` of every request, in arrival order.
        self.seen: List[Tuple[str, bool]] = []
        self._lock = threading.Lock()

    def __call__(self, sock: socket.socket, stopping: threading.Event) -> None:
        while not stopping.is_set():
            head = read_request_head(sock)
            if b"\r\n\r\n" not in head:
                return
            path = head.split(b" ", 2)[1].decode("latin-1")
            with self._lock:
                drop = self.drops_left > 0
                if drop:
                    self.drops_left -= 1
                self.seen.append((path, not drop))
            if drop:
                return  # closed without a byte of answer
            body = json.dumps({"backend": self.name, "path": path}).encode()
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )

    def dropped(self) -> int:
        with self._lock:
            return sum(1 for _, answered in self.seen if not answered)

    def answered(self) -> List[str]:
        with self._lock:
            return [path for path, answered in self.seen if answered]


def _get(proxy: Any, path: str, timeout: float = 5.0) -> RawResponse:
    with RawClient(*proxy.address, timeout=timeout) as client:
        client.request("GET", path)
        return client.read_response()


def _panic(proxy: Any, upstream: str = "default") -> float:
    for name, labels, value in metrics(proxy).get("speedproxy_upstream_panic", []):
        if labels.get("upstream") == upstream:
            return value
    raise AssertionError("no speedproxy_upstream_panic sample for %r" % upstream)


def _config(entries: List[Dict[str, Any]], balancer: str = "round_robin") -> Dict[str, Any]:
    return {
        "backends": {"default": entries},
        "routing": {"default": {"path": "/", "upstream": "default", "load_balancer": balancer}},
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_a_groups_only_backend_keeps_serving_after_passive_failures(stack, workers: int) -> None:
    # Passive failures are counted per worker: 3 per worker make sure one of
    # them takes the backend out (and shares it through the stats segment).
    drops = 3 * workers
    flaky = Flaky("only", drops)
    backend = stack.raw_backend(flaky, name="only")
    # No health_check block: passive checks with their defaults, no probes.
    proxy = stack.proxy(config=_config([backend_entry(backend, id="only")]), workers=workers, **SERVER)
    mark = proxy.log_mark()

    for index in range(drops):
        response = _get(proxy, f"/drop{index}")
        assert response.status == 502, response  # the origin's failure, relayed as such
        assert response.json()["error"] == "bad_gateway"
    assert flaky.dropped() == drops

    # Passive checks took the only backend out; it keeps getting requests.
    for index in range(5):
        started = time.monotonic()
        response = _get(proxy, f"/after{index}")
        assert response.status == 200, (response.status, response.body[:300])
        assert response.json() == {"backend": "only", "path": f"/after{index}"}
        assert time.monotonic() - started < 2.0
    assert flaky.answered() == [f"/after{index}" for index in range(5)]

    wait_until(lambda: _panic(proxy) == 1.0, 5.0, "speedproxy_upstream_panic 1")
    line = proxy.wait_for_log("upstream default: entering panic", 5.0, since=mark)
    assert "0 of 1 backends healthy by passive checks" in line, line
    time.sleep(0.6)  # two more sweeps of every worker: a second line would be there by now
    assert proxy.log_text()[mark:].count("entering panic") == 1, proxy.log_tail()


def test_below_the_threshold_the_group_balances_across_all_its_backends(stack) -> None:
    flaky = Flaky("flaky")
    dropper = stack.raw_backend(flaky, name="flaky")
    good = stack.backend(name="good")
    config = _config([backend_entry(dropper, id="flaky"), backend_entry(good, id="good")])
    # One of two passively down is 50%: under a 75% threshold that is panic.
    proxy = stack.proxy(config=config, panic_threshold="75%", **SERVER)

    # GETs the flaky backend drops are retried on the good one.
    for index in range(40):
        if flaky.dropped() >= 3:
            break
        response = _get(proxy, f"/warm{index}")
        assert response.status == 200 and response.json()["backend"] == "good", response
    assert flaky.dropped() == 3
    wait_until(lambda: _panic(proxy) == 1.0, 5.0, "speedproxy_upstream_panic 1")

    # Within unhealthy_timeout (10 s), both backends take requests again.
    answered_by = []
    for index in range(10):
        response = _get(proxy, f"/p{index}")
        assert response.status == 200, response
        answered_by.append(response.json()["backend"])
    assert set(answered_by) == {"flaky", "good"}, answered_by
    assert len(flaky.answered()) == answered_by.count("flaky")


def test_without_panic_a_passively_down_backend_stays_out(stack) -> None:
    flaky = Flaky("flaky")
    dropper = stack.raw_backend(flaky, name="flaky")
    good = stack.backend(name="good")
    config = _config([backend_entry(dropper, id="flaky"), backend_entry(good, id="good")])
    proxy = stack.proxy(config=config, **SERVER)  # 1 of 2 in = 50%: not below the default 50%
    for index in range(40):
        if flaky.dropped() >= 3:
            break
        assert _get(proxy, f"/warm{index}").status == 200
    for index in range(10):
        assert _get(proxy, f"/p{index}").json()["backend"] == "good"
    assert flaky.answered() == []
    assert _panic(proxy) == 0.0


def test_a_backend_the_active_check_calls_down_stays_out_in_panic(stack) -> None:
    # "checked" answers every request but fails its health probe: the active
    # check takes it out.  "flaky" has no probe; its drops take it out passively.
    checked = stack.backend(name="checked").route("/health", echo(status=503))
    flaky = Flaky("flaky")
    dropper = stack.raw_backend(flaky, name="flaky")
    check = {"path": "/health", "interval": "300ms", "timeout": "500ms", "failures": 1, "successes": 1}
    config = _config([backend_entry(checked, id="checked", health_check=check), backend_entry(dropper, id="flaky")])
    proxy = stack.proxy(config=config, **SERVER)
    proxy.wait_for_log("default/checked is now DOWN", 5.0)

    for index in range(3):
        assert _get(proxy, f"/drop{index}").status == 502
    assert flaky.dropped() == 3

    for index in range(6):
        response = _get(proxy, f"/p{index}")
        assert response.status == 200 and response.json()["backend"] == "flaky", response
    assert [r.path for r in checked.requests if not r.path.startswith("/health")] == []
    wait_until(lambda: _panic(proxy) == 1.0, 5.0, "speedproxy_upstream_panic 1")


def test_every_backend_down_by_active_checks_is_503_at_once(stack) -> None:
    checked = stack.backend(name="checked").route("/health", echo(status=503))
    check = {"path": "/health", "interval": "300ms", "timeout": "500ms", "failures": 1, "successes": 1}
    proxy = stack.proxy(config=_config([backend_entry(checked, id="checked", health_check=check)]), **SERVER)
    proxy.wait_for_log("default/checked is now DOWN", 5.0)
    started = time.monotonic()
    response = _get(proxy, "/x")
    assert time.monotonic() - started < 1.0
    assert response.status == 503 and response.json()["error"] == "no_backend_available", response
    assert [r.path for r in checked.requests if not r.path.startswith("/health")] == []
    assert _panic(proxy) == 0.0
