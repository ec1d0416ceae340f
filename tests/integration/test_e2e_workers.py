"""The multi-process model end to end: a master, N workers, real sockets.

Every test runs ``twistd -n speedproxy`` with ``server.workers`` >= 1 and
looks at it from outside only: the proxy port, the admin API (``/stats``,
``/metrics``), the log, signals and ``/proc``.  Waits are bounded polls.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from typing import Any, Dict, List

import pytest

from speedproxy.testing import RawClient, backend_entry, deep_merge, delayed, stall, wait_until

from workers_support import (
    Load,
    MetricsSampler,
    accepted_owners,
    alive,
    connect_refused,
    failures,
    holds,
    kill_leftovers,
    listener_inodes,
    metrics,
    proc_state,
    reload,
    sample_sum,
    socket_inodes,
    stats,
    wait_workers,
)

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")

#: Small, fast settings shared by every proxy of this module.
SERVER: Dict[str, Any] = {
    "workers": 2,
    "access_log": "off",
    "shutdown_grace": "10s",
    "upstream_connect_timeout": "2s",
    "upstream_read_timeout": "5s",
}

REQUESTS_TOTAL = "speedproxy_requests_total"
HISTOGRAM = "speedproxy_request_duration_seconds"


def _requests_total(families: Dict[str, Any]) -> float:
    return sample_sum(families, "speedproxy_requests", REQUESTS_TOTAL)


def _histogram_count(families: Dict[str, Any]) -> float:
    return sample_sum(families, HISTOGRAM, HISTOGRAM + "_count")


def _get(proxy, path: str = "/one") -> Dict[str, Any]:
    with RawClient(*proxy.address, timeout=5.0) as client:
        client.request("GET", path)
        response = client.read_response()
    assert response.status == 200, response.body[:300]
    return response.json()


def _weighted(stack, first: int, second: int, **server: Any):
    """Two echo backends ``a`` (b0) and ``b`` (b1) behind the ``weight`` balancer."""
    a = stack.backend(name="a")
    b = stack.backend(name="b")
    config = {
        "backends": {"default": [backend_entry(a, id="b0", weight=first), backend_entry(b, id="b1", weight=second)]},
    }
    proxy = stack.proxy(a, b, config=config, load_balancer="weight", **deep_merge(SERVER, server))
    return proxy, a, b


# -- 1. worker count, pids, the master serves no traffic ---------------------------------


def test_two_workers_are_children_and_only_they_accept(stack) -> None:
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, **SERVER)
    assert f"(2 workers, master pid {proxy.pid})" in proxy.log_text()
    workers = wait_workers(proxy, 2)
    assert sorted(workers) == [0, 1]
    pids = set(workers.values())
    assert len(pids) == 2 and proxy.pid not in pids
    for pid in pids:
        state = proc_state(pid)
        assert state is not None and alive(pid), pid
        assert state[1] == proxy.pid, f"worker {pid} has parent {state[1]}, not the master {proxy.pid}"
    # The master holds the listening socket...
    listening = listener_inodes(proxy.port)
    assert listening and listening & socket_inodes(proxy.pid)

    # ...but every accepted connection lives in a worker.
    clients: List[RawClient] = []
    try:
        for _ in range(12):
            client = RawClient(*proxy.address, timeout=5.0)
            clients.append(client)
            client.request("GET", "/hold")
            assert client.read_response().status == 200
        ports = {client.sock.getsockname()[1] for client in clients}
        owners = accepted_owners(proxy.port, [proxy.pid, *pids])
        held = {port: owners.get(port) for port in ports}
        assert all(owner in pids for owner in held.values()), (held, proxy.pid)
    finally:
        for client in clients:
            client.close()

    def counted() -> Any:
        snapshot = stats(proxy)
        return snapshot if snapshot["totals"]["requests"] == 12 else None

    snapshot = wait_until(counted, 2.0, "12 requests in /stats")
    assert sum(w["requests"] for w in snapshot["workers"]) == 12
    families = metrics(proxy)
    assert sample_sum(families, "speedproxy_workers") == 2
    assert sample_sum(families, "speedproxy_worker_requests", "speedproxy_worker_requests_total") == 12


# -- 2. load spreads over both workers ------------------------------------------------------


def test_concurrent_keepalive_clients_reach_both_workers(stack) -> None:
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, **SERVER)
    wait_workers(proxy, 2)
    # Clients arrive one after the other (each connects once the previous got its
    # first answer) and then all stay connected and busy.
    load = Load(proxy, connections=16, max_requests=800, max_seconds=15.0).start(ramp=True)
    outcomes = load.join(20.0)
    assert len(outcomes) == 800
    assert not failures(outcomes), failures(outcomes)[:5]

    def spread() -> Any:
        snapshot = stats(proxy)
        return snapshot if snapshot["totals"]["requests"] == 800 else None

    snapshot = wait_until(spread, 2.0, "800 requests in /stats")
    per_worker = {w["slot"]: w["requests"] for w in snapshot["workers"]}
    assert sum(per_worker.values()) == 800
    assert all(count > 0 for count in per_worker.values()), per_worker


def test_a_burst_of_connections_is_shared_evenly(stack) -> None:
    """40 clients connecting at once end up 20/20 (+-2), not on whichever worker woke first."""
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, **SERVER)
    wait_workers(proxy, 2)
    clients = [RawClient(*proxy.address, timeout=10.0) for _ in range(40)]
    try:
        for client in clients:
            client.request("GET", "/burst")
        for client in clients:
            assert client.read_response().status == 200

        def split() -> Any:
            counts = sorted(w["active_connections"] for w in stats(proxy)["workers"])
            return counts if sum(counts) == 40 else None

        counts = wait_until(split, 5.0, "40 connections in /stats")
        assert counts[0] >= 18, f"connections per worker: {counts}"
    finally:
        for client in clients:
            client.close()


# -- 3. kill -9 of one worker under load ------------------------------------------------------


def test_killed_worker_is_replaced_and_only_its_connections_fail(stack) -> None:
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, **SERVER)
    workers = wait_workers(proxy, 2)
    pids = set(workers.values())
    connections = 12
    load = Load(proxy, connections=connections, max_seconds=15.0).start(ramp=True)
    sampler = MetricsSampler(proxy).start()
    replacement = 0
    try:
        load.wait_count(200, 10.0)
        owners = accepted_owners(proxy.port, [proxy.pid, *pids])
        by_port = {port: owners.get(port) for port in load.ports.values()}
        assert all(owner in pids for owner in by_port.values()), by_port
        held = Counter(by_port.values())
        assert len(held) == 2, f"all connections on one worker: {held}"
        victim = held.most_common(1)[0][0]
        slot = next(s for s, pid in workers.items() if pid == victim)
        victim_ports = {port for port, owner in by_port.items() if owner == victim}
        before = len(load.snapshot())
        wait_until(lambda: len(sampler.samples) >= 2, 5.0, "metrics samples before the kill")
        sampled_before = len(sampler.samples)

        os.kill(victim, signal.SIGKILL)

        def replaced() -> Any:
            for row in stats(proxy)["workers"]:
                if row["slot"] == slot and row["ready"] and row["pid"] not in (0, victim):
                    return row["pid"]
            return None

        # Respawned at once (a first death has no backoff); the bound leaves
        # room for a loaded machine, where starting a worker takes seconds.
        replacement = wait_until(replaced, 8.0, f"a new ready worker in slot {slot}")
        assert alive(replacement) and proc_state(replacement)[1] == proxy.pid  # type: ignore[index]
        load.wait_count(len(load.snapshot()) + 300, 10.0)
    finally:
        outcomes = load.stop()
        sampler.stop()
    assert not alive(victim)
    assert len(outcomes) > before

    failed = failures(outcomes)
    # Only requests on the dead worker's connections fail, at most one per connection.
    assert len(failed) <= connections, [f.error for f in failed][:10]
    failed_ports = [load.ports.get(f.connection) for f in failed]
    assert all(port in victim_ports for port in failed_ports), (failed_ports, victim_ports, failed[:5])
    assert len(set(failed_ports)) == len(failed_ports), "a connection failed twice"

    # /metrics never went backwards, and saw exactly one restart.
    assert not sampler.errors, sampler.errors[:3]
    assert len(sampler.samples) >= sampled_before + 3, (sampled_before, len(sampler.samples))
    requests = [s[0] for s in sampler.samples]
    counts = [s[1] for s in sampler.samples]
    assert all(b >= a for a, b in zip(requests, requests[1:])), requests
    assert all(b >= a for a, b in zip(counts, counts[1:])), counts
    assert sampler.samples[-1][2] == 1
    final = metrics(proxy)
    assert sample_sum(final, "speedproxy_worker_restarts") == 1
    assert stats(proxy)["worker_restarts"] == 1
    # The dead worker's counts were folded in: the total matches what clients got,
    # give or take one request per connection of the killed worker.
    successes = len(outcomes) - len(failed)
    slack = len(victim_ports)
    total = wait_until(
        lambda: (lambda value: value if value >= successes - slack else None)(_requests_total(metrics(proxy))),
        2.0,
        "the request total to catch up",
    )
    assert abs(total - successes) <= slack, (total, successes, slack)
    assert set(wait_workers(proxy, 2).values()) == (pids - {victim}) | {replacement}


# -- 4. SIGHUP: new weights under load -------------------------------------------------------


def test_sighup_new_weights_apply_without_failures(stack) -> None:
    proxy, a, b = _weighted(stack, 1, 1)
    wait_workers(proxy, 2)
    load = Load(proxy, connections=8, max_seconds=15.0).start()
    try:
        load.wait_count(200, 10.0)
        proxy.write_config(
            deep_merge(
                proxy.config,
                {"backends": {"default": [backend_entry(a, id="b0", weight=9), backend_entry(b, id="b1", weight=1)]}},
            )
        )
        sent = time.monotonic()
        line, live_at = reload(proxy, timeout=5.0)
        assert "config version 2" in line and "is live" in line, line
        assert live_at - sent <= 2.0

        def after() -> List[Any]:
            return [o for o in load.snapshot() if o.started >= live_at]

        wait_until(lambda: len(after()) >= 400, 10.0, "400 requests after the reload")
    finally:
        outcomes = load.stop()
    assert not failures(outcomes), failures(outcomes)[:5]
    before = [o.backend for o in outcomes if o.finished < sent]
    assert before and abs(before.count("a") / len(before) - 0.5) <= 0.1, Counter(before)
    window = sorted((o for o in outcomes if o.started >= live_at), key=lambda o: o.started)[:400]
    share = sum(1 for o in window if o.backend == "a") / len(window)
    assert abs(share - 0.9) <= 0.04, Counter(o.backend for o in window)
    assert window[-1].finished - live_at <= 2.0
    assert all(w["config_version"] == 2 for w in stats(proxy)["workers"])


# -- 5. SIGHUP with an invalid file under load --------------------------------------------------


def test_sighup_invalid_file_is_refused_and_old_config_serves(stack) -> None:
    proxy, a, b = _weighted(stack, 1, 1)
    wait_workers(proxy, 2)
    good = proxy.config_path.read_text()
    load = Load(proxy, connections=8, max_seconds=15.0).start()
    try:
        load.wait_count(100, 10.0)
        mark = proxy.log_mark()
        bad = good.replace("weight: 1\n", "weight: heavy\n", 1)
        assert bad != good
        proxy.write_config_text(bad)
        line, refused_at = reload(proxy, timeout=5.0)
        assert "config reload refused" in line, line
        reason = proxy.wait_for_log("backends.default[0].weight", timeout=2.0, since=mark)
        assert "heavy" in reason, reason
        wait_until(
            lambda: len([o for o in load.snapshot() if o.started >= refused_at]) >= 200, 10.0, "200 requests after"
        )
    finally:
        outcomes = load.stop()
    assert not failures(outcomes), failures(outcomes)[:5]
    assert proxy.running()
    after = Counter(o.backend for o in outcomes if o.started >= refused_at)
    assert abs(after["a"] / sum(after.values()) - 0.5) <= 0.1, after
    snapshot = stats(proxy)
    assert snapshot["config_version"] == 1
    assert all(w["config_version"] == 1 for w in snapshot["workers"])
    assert "is live" not in proxy.log_text()[mark:]


# -- 6. SIGHUP changes the number of workers -------------------------------------------------------


def test_sighup_changes_worker_count(stack) -> None:
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, **SERVER)
    first = wait_workers(proxy, 2)
    seen = set(first.values())
    try:
        proxy.write_config(deep_merge(proxy.config, {"server": {"workers": 3}}))
        line, _ = reload(proxy)
        assert "is live" in line, line
        three = wait_workers(proxy, 3, timeout=5.0)
        seen |= set(three.values())
        assert sorted(three) == [0, 1, 2]
        assert three[0] == first[0] and three[1] == first[1]
        assert len(set(three.values())) == 3
        assert all(proc_state(pid)[1] == proxy.pid for pid in three.values())  # type: ignore[index]
        assert _get(proxy)["backend"] == "origin"

        proxy.write_config(deep_merge(proxy.config, {"server": {"workers": 1}}))
        line, _ = reload(proxy)
        assert "is live" in line, line
        one = wait_workers(proxy, 1, timeout=5.0)
        assert one == {0: first[0]}
        wait_until(lambda: not alive(three[1]) and not alive(three[2]), 5.0, "retired workers to exit")
        assert stats(proxy)["worker_restarts"] == 0
        families = metrics(proxy)
        assert sample_sum(families, "speedproxy_workers") == 1
        for _ in range(5):
            assert _get(proxy)["backend"] == "origin"
    finally:
        kill_leftovers(seen - {first[0]})


# -- 7. SIGTERM drains an in-flight request ----------------------------------------------------------


def test_sigterm_finishes_slow_request_stops_accepting_and_exits_0(stack) -> None:
    origin = stack.backend(name="origin")
    origin.route("/slow", delayed(5.0))
    proxy = stack.proxy(origin, **deep_merge(SERVER, {"upstream_read_timeout": "15s"}))
    workers = wait_workers(proxy, 2)
    outcome: Dict[str, Any] = {}

    def slow_request() -> None:
        try:
            with RawClient(*proxy.address, timeout=15.0) as client:
                client.request("GET", "/slow/request")
                outcome["response"] = client.read_response()
                outcome["at"] = time.monotonic()
        except Exception as error:  # reported below
            outcome["error"] = error

    thread = threading.Thread(target=slow_request, daemon=True)
    thread.start()
    try:
        origin.wait_for(lambda b: ("GET", "/slow/request") in b.heads, 5.0, "the slow request")
        proxy.signal(signal.SIGTERM)
        term_at = time.monotonic()
        # The listener is closed: new connections are refused, while the slow one still runs.
        wait_until(lambda: connect_refused(proxy.address), 2.0, "new connections to be refused")
        assert thread.is_alive() and "response" not in outcome
        thread.join(12.0)
        assert not thread.is_alive()
        assert "error" not in outcome, outcome.get("error")
        response = outcome["response"]
        assert response.status == 200 and not response.truncated
        assert response.json()["path"] == "/slow/request"
        assert outcome["at"] - term_at >= 4.0  # it really was drained, not cut
        code = proxy.wait(10.0 - (time.monotonic() - term_at))
        assert code == 0, proxy.log_tail()
        assert time.monotonic() - term_at < 10.0
        assert not any(alive(pid) for pid in workers.values())
    finally:
        thread.join(1.0)
        kill_leftovers(workers.values())


def test_second_sigterm_exits_at_once(stack) -> None:
    origin = stack.backend(name="origin")
    origin.route("/stall", stall())
    proxy = stack.proxy(origin, **deep_merge(SERVER, {"upstream_read_timeout": "30s"}))
    workers = wait_workers(proxy, 2)
    client = RawClient(*proxy.address, timeout=10.0)
    try:
        client.request("GET", "/stall/request")
        origin.wait_for(lambda b: b.stalled >= 1, 5.0, "the stalled request")
        proxy.signal(signal.SIGTERM)
        wait_until(lambda: connect_refused(proxy.address), 2.0, "new connections to be refused")
        # Draining: the stalled request holds the stop for up to shutdown_grace.
        assert holds(lambda: proxy.running() and any(alive(pid) for pid in workers.values()), 0.5), (
            "the first SIGTERM did not wait for the in-flight request:\n" + proxy.log_tail()
        )
        assert client.read_available(0.05) == b"" and not client.closed_by_peer
        proxy.signal(signal.SIGTERM)
        second_at = time.monotonic()
        proxy.wait(3.0)
        assert time.monotonic() - second_at < 2.0
        wait_until(lambda: not any(alive(pid) for pid in workers.values()), 2.0, "workers to be gone")
        assert client.wait_closed(2.0) == b""
    finally:
        client.close()
        kill_leftovers(workers.values())


# -- 8. /metrics counts exactly -------------------------------------------------------------------


def test_metrics_count_every_request_exactly(stack) -> None:
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, **SERVER)
    wait_workers(proxy, 2)
    load = Load(proxy, connections=6, max_requests=300, max_seconds=15.0).start(ramp=True)
    outcomes = load.join(20.0)
    assert len(outcomes) == 300
    assert not failures(outcomes), failures(outcomes)[:5]

    def settled() -> Any:
        families = metrics(proxy)
        return families if _requests_total(families) >= 300 and _histogram_count(families) >= 300 else None

    families = wait_until(settled, 2.0, "300 requests in /metrics")
    assert _requests_total(families) == 300
    assert _histogram_count(families) == 300
    buckets = [v for name, labels, v in families[HISTOGRAM] if name == HISTOGRAM + "_bucket" and labels["le"] == "+Inf"]
    assert buckets == [300]
    per_route = {
        labels["status_class"]: v
        for name, labels, v in families["speedproxy_requests"]
        if name == REQUESTS_TOTAL and labels["route"] == "default"
    }
    assert per_route["2xx"] == 300
    assert sample_sum(families, "speedproxy_worker_requests", "speedproxy_worker_requests_total") == 300
    assert sample_sum(families, "speedproxy_backend_requests", "speedproxy_backend_requests_total") == 300
    assert stats(proxy)["totals"]["requests"] == 300


# -- 9. workers die with their master -------------------------------------------------------------


def test_workers_exit_when_master_is_killed(stack) -> None:
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, **SERVER)
    workers = wait_workers(proxy, 2)
    assert _get(proxy)["backend"] == "origin"
    try:
        assert proxy.process is not None
        proxy.process.kill()
        proxy.process.wait(5.0)
        wait_until(lambda: not any(alive(pid) for pid in workers.values()), 3.0, "orphaned workers to exit")
        wait_until(lambda: connect_refused(proxy.address), 2.0, "the port to close")
    finally:
        kill_leftovers(workers.values())
