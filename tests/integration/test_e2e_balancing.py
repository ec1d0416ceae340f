"""Balancers end to end: weights, ip_hash stickiness, load-aware balancers, limits.

Each test runs ``twistd -n speedproxy`` with two workers (the real process
model) in front of threaded test backends and counts where requests went,
from the backends' ``backend`` answer field and their own request records.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Dict, List

import pytest

from speedproxy.testing import RawClient, backend_entry, delayed, echo, wait_until

from balancing_support import Result, fire

SERVER: Dict[str, Any] = {"workers": 2, "access_log": "off", "upstream_read_timeout": "5s"}


def _gets(count: int, path: str = "/", headers=()) -> List[tuple]:
    return [("GET", path, tuple(headers), b"")] * count


def _all_ok(results: List[Result]) -> None:
    bad = [r for r in results if not r.ok]
    assert not bad, f"{len(bad)} failed, e.g. {bad[:3]}"


# -- weight ------------------------------------------------------------------------------


def test_weights_3_to_1_split_4000_requests_75_25(stack) -> None:
    heavy = stack.backend(name="heavy")
    light = stack.backend(name="light")
    config = {"backends": {"default": [backend_entry(heavy, id="heavy", weight=3),
                                       backend_entry(light, id="light", weight=1)]}}
    proxy = stack.proxy(heavy, light, config=config, load_balancer="weight", **SERVER)
    results = fire(proxy.address, _gets(4000), threads=8)
    assert len(results) == 4000
    _all_ok(results)
    shares = Counter(r.backend for r in results)
    assert abs(shares["heavy"] / 4000 - 0.75) <= 0.02, shares
    assert abs(shares["light"] / 4000 - 0.25) <= 0.02, shares
    assert len(heavy.requests) == shares["heavy"] and len(light.requests) == shares["light"]


# -- ip_hash -------------------------------------------------------------------------------


def test_ip_hash_is_sticky_per_client_ip_and_removal_moves_only_that_backends_clients(stack) -> None:
    backends = [stack.backend(name=f"h{i}") for i in range(4)]
    entries = [backend_entry(b, id=b.name) for b in backends]
    config = {
        "server": {"trusted_proxies": ["127.0.0.1/32"], "real_ip_header": "X-Real-IP"},
        "backends": {"default": entries},
    }
    proxy = stack.proxy(*backends, config=config, load_balancer="ip_hash", **SERVER)
    ips = [f"10.{i // 250}.{i % 250}.{(i * 7) % 250 + 1}" for i in range(1000)]
    assert len(set(ips)) == 1000

    def round_of(label: str) -> Dict[str, str]:
        requests = [("GET", f"/{label}/{i}", (("X-Real-IP", ip),), b"") for i, ip in enumerate(ips)]
        results = fire(proxy.address, requests, threads=8)
        assert len(results) == len(ips)
        _all_ok(results)
        return {ips[r.index]: r.backend for r in results}

    first = round_of("a")
    second = round_of("b")
    assert first == second, [ip for ip in ips if first[ip] != second[ip]][:10]
    shares = Counter(first.values())
    assert set(shares) == {"h0", "h1", "h2", "h3"}, shares
    assert all(count >= 100 for count in shares.values()), f"hashing does not spread clients: {shares}"
    # The backend saw the client address the proxy hashed on.
    seen = {r.path: r.header("X-Real-IP") for r in backends[0].requests}
    assert all(seen[f"/a/{i}"] == ip for i, ip in enumerate(ips) if f"/a/{i}" in seen)

    removed = "h2"
    proxy.reload({"backends": {"default": [e for e in entries if e["id"] != removed]}})
    third = round_of("c")
    moved = [ip for ip in ips if first[ip] != third[ip]]
    assert all(first[ip] == removed for ip in moved), "clients of kept backends were remapped: " + str(
        [(ip, first[ip], third[ip]) for ip in moved if first[ip] != removed][:10]
    )
    assert len(moved) == shares[removed]
    assert removed not in set(third.values())
    # Still sticky after the change.
    assert round_of("d") == third


# -- load aware balancers --------------------------------------------------------------------


@pytest.mark.parametrize("balancer", ["least_connections", "performance"])
def test_fast_backend_gets_most_traffic(stack, balancer: str) -> None:
    slow = stack.backend(delayed(0.2), name="slow")
    fast = stack.backend(delayed(0.005), name="fast")
    proxy = stack.proxy(slow, fast, load_balancer=balancer, **SERVER)
    started = time.monotonic()
    results = fire(proxy.address, _gets(300), threads=8)
    elapsed = time.monotonic() - started
    _all_ok(results)
    shares = Counter(r.backend for r in results)
    assert shares["fast"] + shares["slow"] == 300
    assert shares["fast"] >= 0.75 * 300, f"{balancer}: {shares} in {elapsed:.1f}s"


# -- backends that must get nothing ------------------------------------------------------------


def test_inactive_and_zero_weight_backends_get_no_traffic(stack) -> None:
    live = stack.backend(name="live")
    off = stack.backend(name="off")
    zero = stack.backend(name="zero")
    config = {
        "backends": {"default": [backend_entry(off, id="off", active=False),
                                 backend_entry(live, id="live"),
                                 backend_entry(zero, id="zero", weight=0)]},
        "routing": {
            "default": {"path": "/", "upstream": "default", "load_balancer": "round_robin"},
            "weighted": {"path": "/w", "upstream": "default", "load_balancer": "weight"},
            "lc": {"path": "/lc", "upstream": "default", "load_balancer": "least_connections"},
            "hash": {"path": "/h", "upstream": "default", "load_balancer": "ip_hash"},
        },
    }
    proxy = stack.proxy(config=config, **SERVER)
    requests = []
    for path in ("/rr", "/w", "/lc", "/h"):
        requests += [("GET", path, (("X-Real-IP", f"10.1.0.{i}"),), b"") for i in range(1, 41)]
    results = fire(proxy.address, requests, threads=4)
    _all_ok(results)
    assert Counter(r.backend for r in results) == {"live": 160}
    assert not off.requests and not zero.requests


# -- max_conn --------------------------------------------------------------------------------


def test_max_conn_overflow_goes_to_the_other_backend_then_503_without_a_queue(stack) -> None:
    # With the default server.queue_timeout the overflow waits for a slot
    # instead (test_e2e_queue.py); without a queue it is a 503 at once.
    release = threading.Event()

    def held(exchange) -> None:
        release.wait(10.0)
        echo()(exchange)

    first = stack.backend(held, name="first")
    second = stack.backend(held, name="second")
    config = {"backends": {"default": [backend_entry(first, id="first", max_conn=1),
                                       backend_entry(second, id="second", max_conn=1)]}}
    proxy = stack.proxy(first, second, config=config, queue_timeout=0, **SERVER)
    clients = [RawClient(*proxy.address, timeout=10.0) for _ in range(2)]
    try:
        for count, client in enumerate(clients, start=1):
            client.request("GET", f"/slow{count}")
            wait_until(lambda: len(first.heads) + len(second.heads) == count, 5.0, f"{count} held requests")
        assert len(first.heads) == 1 and len(second.heads) == 1, (first.heads, second.heads)

        with RawClient(*proxy.address, timeout=5.0) as extra:
            started = time.monotonic()
            extra.request("GET", "/overflow")
            response = extra.read_response()
        assert time.monotonic() - started < 2.0
        assert response.status == 503, response
        body = response.json()
        assert set(body) >= {"error", "detail", "request_id"} and body["error"], body
        assert (response.header("Content-Type") or "").startswith("application/json")

        release.set()
        answers = [client.read_response() for client in clients]
        assert [a.status for a in answers] == [200, 200]
        assert {a.json()["backend"] for a in answers} == {"first", "second"}
    finally:
        release.set()
        for client in clients:
            client.close()
    # Capacity is back once they finished.
    wait_until(lambda: fire(proxy.address, _gets(1))[0].ok, 5.0, "a request served after the slots freed")
