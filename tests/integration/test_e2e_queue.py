"""Queue, not 503, when every backend is at ``max_conn`` (end to end).

A real ``twistd speedproxy`` in front of one backend with ``max_conn: 1``
whose ``/slow`` answers are held until the test releases them: the next
requests wait in the upstream's queue and are served in order as the slot
frees up, or get a 503 when the queue is full or their wait times out.
Checked: what each client got and when, what the backend received and in
which order, ``/metrics`` (``speedproxy_upstream_queue``) and the access log
(``qt=``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List

import pytest

from speedproxy.testing import RawClient, RawResponse, backend_entry, echo, wait_until

from balancing_support import admin_json
from workers_support import metrics

SERVER: Dict[str, Any] = {"upstream_read_timeout": "10s"}


class Held:
    """Holds ``/slow`` answers until :meth:`release`; answers everything else at once."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def __call__(self, exchange: Any) -> None:
        if exchange.request.path.startswith("/slow"):
            self.released.wait(15.0)
        echo()(exchange)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def held(stack):
    gate = Held()
    backend = stack.backend(gate, name="only")
    yield gate, backend
    gate.release()


def _proxy(stack, backend, **server: Any):
    config = {
        "backends": {"default": [backend_entry(backend, id="only", max_conn=1)]},
        "routing": {"default": {"path": "/", "upstream": "default", "load_balancer": "round_robin"}},
    }
    return stack.proxy(config=config, **dict(SERVER, **server))


def _queue(proxy: Any, upstream: str = "default") -> float:
    for _, labels, value in metrics(proxy).get("speedproxy_upstream_queue", []):
        if labels.get("upstream") == upstream:
            return value
    raise AssertionError("no speedproxy_upstream_queue sample")


def _counter(proxy: Any, family: str, upstream: str = "default") -> float:
    for name, labels, value in metrics(proxy).get(family, []):
        if labels.get("upstream") == upstream and name.endswith("_total"):
            return value
    raise AssertionError(f"no {family} sample")


def _send(proxy: Any, path: str) -> RawClient:
    client = RawClient(*proxy.address, timeout=10.0)
    client.request("GET", path)
    return client


def _paths(backend: Any) -> List[str]:
    return [path for _, path in list(backend.heads)]


def test_requests_wait_for_the_slot_and_are_served_in_order(stack, held) -> None:
    gate, backend = held
    proxy = _proxy(stack, backend)
    clients: List[RawClient] = []
    try:
        clients.append(_send(proxy, "/slow"))
        backend.wait_for(lambda b: len(b.heads) == 1, 5.0, "the held request")
        for count, path in enumerate(("/second", "/third", "/fourth"), start=1):
            clients.append(_send(proxy, path))
            wait_until(lambda: _queue(proxy) == count, 5.0, f"{count} queued")
        assert _paths(backend) == ["/slow"]  # nobody jumped the slot
        assert clients[1].read_available(0.2) == b""

        gate.release()
        answers: List[RawResponse] = [client.read_response() for client in clients]
        assert [a.status for a in answers] == [200, 200, 200, 200]
        assert [a.json()["path"] for a in answers] == ["/slow", "/second", "/third", "/fourth"]
        assert _paths(backend) == ["/slow", "/second", "/third", "/fourth"]  # FIFO
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: _queue(proxy) == 0, 5.0, "an empty queue")
    assert _counter(proxy, "speedproxy_upstream_queued") == 3
    for path in ("/second", "/third", "/fourth"):
        line = proxy.wait_for_log(f'"GET {path} HTTP/1.1" 200', 5.0)
        assert " qt=" in line, line
    assert " qt=" not in proxy.wait_for_log('"GET /slow HTTP/1.1" 200', 5.0)


def test_a_request_gets_503_after_queue_timeout(stack, held) -> None:
    gate, backend = held
    proxy = _proxy(stack, backend, queue_timeout="300ms")
    with _send(proxy, "/slow") as first:
        backend.wait_for(lambda b: len(b.heads) == 1, 5.0, "the held request")
        started = time.monotonic()
        with _send(proxy, "/waits") as waiting:
            response = waiting.read_response()
            elapsed = time.monotonic() - started
        assert response.status == 503, response
        body = response.json()
        assert body["error"] == "queue_timeout" and body["request_id"] == response.header("X-Request-Id"), body
        assert 0.25 <= elapsed < 1.5, elapsed
        gate.release()
        assert first.read_response().status == 200
    assert _paths(backend) == ["/slow"]
    assert _counter(proxy, "speedproxy_upstream_queue_timeouts") == 1
    line = proxy.wait_for_log('"GET /waits HTTP/1.1" 503', 5.0)
    assert " qt=0.3" in line, line


def test_a_full_queue_answers_503_at_once(stack, held) -> None:
    gate, backend = held
    proxy = _proxy(stack, backend, queue_size=1)
    with _send(proxy, "/slow") as first, _send(proxy, "/second") as second:
        backend.wait_for(lambda b: len(b.heads) == 1, 5.0, "the held request")
        wait_until(lambda: _queue(proxy) == 1, 5.0, "one queued")
        upstream = admin_json(proxy, "/upstream")["upstreams"]["default"]
        assert (upstream["queue"], upstream["panic"]) == (1, False), upstream
        (row,) = admin_json(proxy, "/stats")["upstreams"]
        assert (row["upstream"], row["queue"], row["queued"]) == ("default", 1, 1), row
        started = time.monotonic()
        with _send(proxy, "/third") as third:
            response = third.read_response()
        assert time.monotonic() - started < 1.0
        assert response.status == 503 and response.json()["error"] == "queue_full", response
        gate.release()
        assert first.read_response().status == 200
        assert second.read_response().json()["path"] == "/second"
    assert _paths(backend) == ["/slow", "/second"]
    assert _counter(proxy, "speedproxy_upstream_queue_full") == 1


def test_a_client_that_gives_up_leaves_the_queue(stack, held) -> None:
    gate, backend = held
    proxy = _proxy(stack, backend)
    with _send(proxy, "/slow") as first:
        backend.wait_for(lambda b: len(b.heads) == 1, 5.0, "the held request")
        gone = _send(proxy, "/gone")
        wait_until(lambda: _queue(proxy) == 1, 5.0, "one queued")
        gone.close()
        wait_until(lambda: _queue(proxy) == 0, 5.0, "the queue emptied by the client leaving")
        gate.release()
        assert first.read_response().status == 200
    with _send(proxy, "/next") as following:
        assert following.read_response().json()["path"] == "/next"
    assert _paths(backend) == ["/slow", "/next"]


def test_no_queue_with_queue_timeout_0(stack, held) -> None:
    gate, backend = held
    proxy = _proxy(stack, backend, queue_timeout=0)
    with _send(proxy, "/slow"):
        backend.wait_for(lambda b: len(b.heads) == 1, 5.0, "the held request")
        with _send(proxy, "/refused") as refused:
            response = refused.read_response()
        assert response.status == 503 and response.json()["error"] == "no_backend_available", response
        gate.release()
    assert _paths(backend) == ["/slow"]


def test_a_slot_freed_in_another_worker_serves_the_queue(stack, held) -> None:
    # Two workers: the waiting request may sit in the other worker than the
    # held one; in-flight counts are shared, so it finds the freed slot.
    gate, backend = held
    proxy = _proxy(stack, backend, workers=2)
    with _send(proxy, "/slow") as first:
        backend.wait_for(lambda b: len(b.heads) == 1, 5.0, "the held request")
        waiting = [_send(proxy, f"/w{index}") for index in range(3)]
        try:
            wait_until(lambda: _queue(proxy) == 3, 5.0, "three queued across the workers")
            assert _paths(backend) == ["/slow"]
            gate.release()
            assert first.read_response().status == 200
            answers = [client.read_response() for client in waiting]
        finally:
            for client in waiting:
                client.close()
    assert [a.status for a in answers] == [200, 200, 200]
    assert sorted(_paths(backend)) == ["/slow", "/w0", "/w1", "/w2"]
