"""The fleet end to end: two ``twistd speedproxy`` nodes on one host sharing one real Redis.

Each node runs 2 workers with a memory cache in front of one origin.  The
nodes find each other (``/api/v1/cluster/nodes``, metrics), a purge or a
clear made on one node's admin API empties both nodes' caches, and Redis
killed while clients load both nodes fails no request (``/health`` says
``degraded`` meanwhile, and everything comes back with Redis).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, List

import pytest

from speedproxy.testing.redis import RedisServer
from speedproxy.testing import BackendExchange, HTTPBackend, ProxyProcess, wait_until

from admin_support import AdminClient
from cluster_support import KEY, SITE, get, metric, node_config, node_names, redis  # noqa: F401 (fixture)

CACHED = {"routing": {"default": {"cache": {"enabled": True}}}}


class Origin:
    """Answers every path with a body cacheable for a minute; counts requests per path."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self.server = HTTPBackend(self._answer, name="origin")

    def _answer(self, exchange: BackendExchange) -> None:
        with self._lock:
            self.counts[exchange.request.path] += 1
            serial = self.counts[exchange.request.path]
        exchange.send(200, f"{exchange.request.path} #{serial}".encode(), [("Cache-Control", "max-age=60")])


@pytest.fixture
def fleet(stack: Any, redis: RedisServer) -> Any:
    origin = Origin()
    origin.server.start()
    stack.backends.append(origin.server)
    a = stack.proxy(config=node_config(origin.server, redis.url, "edge-a", CACHED))
    b = stack.proxy(config=node_config(origin.server, redis.url, "edge-b", CACHED))
    admins = AdminClient.of(a, KEY), AdminClient.of(b, KEY)
    for admin in admins:
        wait_until(lambda admin=admin: _names(admin) == ["edge-a", "edge-b"], 15.0, "both nodes to be listed")
    return a, b, admins, origin


def _names(admin: AdminClient) -> List[str]:
    answer = admin.get("/api/v1/cluster/nodes")
    return node_names(answer.json) if answer.status == 200 else []


def _keys(admin: AdminClient) -> List[str]:
    answer = admin.get("/cache/keys")
    assert answer.status == 200, answer
    return answer.json["keys"]


def _stored(proxy: ProxyProcess, admin: AdminClient, path: str) -> None:
    """Fetch ``path`` until every worker of ``proxy`` holds it."""
    assert get(proxy, path)[0] == 200
    wait_until(
        lambda: get(proxy, path)[0] == 200 and sum(1 for key in _keys(admin) if key.endswith(path)) >= 1
        and all("hit" in get(proxy, path)[1].get("cache-status", "").split(",")[-1] for _ in range(4)),
        10.0, f"{path} to be cached",
    )


def test_nodes_listed_with_metrics_and_the_key(fleet: Any) -> None:
    a, b, (admin_a, admin_b), _ = fleet
    body = admin_a.get("/api/v1/cluster/nodes").json
    assert body["enabled"] is True and body["node"] == "edge-a" and body["count"] == 2
    assert body["redis"]["up"] is True
    by_name = {node["name"]: node for node in body["nodes"]}
    assert by_name["edge-a"]["self"] is True and by_name["edge-b"]["self"] is False
    assert by_name["edge-b"]["admin"] == f"127.0.0.1:{b.admin_port}"
    assert by_name["edge-b"]["listen"] == f"127.0.0.1:{b.port}"
    assert by_name["edge-b"]["workers"] == 2 and by_name["edge-b"]["age_seconds"] < 5
    assert admin_a.get("/api/v1/cluster/nodes", key=None).status == 401
    text = admin_b.get("/metrics").raw.decode()
    assert metric(text, "speedproxy_redis_up") == 1
    wait_until(lambda: metric(admin_b.get("/metrics").raw.decode(), "speedproxy_cluster_nodes") == 2, 10.0, "2 nodes")
    health = admin_a.get("/health")
    assert health.status == 200 and health.json["status"] == "healthy", health


def test_a_node_that_stops_leaves_the_list(fleet: Any) -> None:
    a, b, (admin_a, _), _ = fleet
    b.stop()
    wait_until(lambda: _names(admin_a) == ["edge-a"], 5.0, "edge-b to leave the list")


def test_a_purge_on_one_node_clears_both(fleet: Any) -> None:
    a, b, (admin_a, admin_b), origin = fleet
    for proxy, admin in ((a, admin_a), (b, admin_b)):
        _stored(proxy, admin, "/video/seg1.ts")
        _stored(proxy, admin, "/video/seg2.ts")
    answer = admin_a.post("/api/v1/cache/purge", {"url": f"http://{SITE}/video/seg1.ts"})
    assert answer.status == 200 and answer.json["purged"] >= 1, answer
    wait_until(lambda: not any(k.endswith("/video/seg1.ts") for k in _keys(admin_b)), 5.0, "the purge to reach edge-b")
    assert any(k.endswith("/video/seg2.ts") for k in _keys(admin_b))
    assert not any(k.endswith("/video/seg1.ts") for k in _keys(admin_a))
    before = origin.counts["/video/seg1.ts"]
    status, _, body = get(b, "/video/seg1.ts")
    assert status == 200 and origin.counts["/video/seg1.ts"] == before + 1, body
    assert b.wait_for_log("cache purge from node edge-a")
    # A clear made on edge-b empties edge-a too, and is not echoed back (no loop).
    answer = admin_b.post("/cache/clear?type=all&confirm=yes")
    assert answer.status == 200, answer
    wait_until(lambda: _keys(admin_a) == [], 5.0, "the clear to reach edge-a")
    assert _keys(admin_b) == []
    # Had edge-a echoed the clear, the echo would reach edge-b before this later purge of edge-a's.
    assert admin_a.post("/api/v1/cache/purge", {"url": f"http://{SITE}/marker"}).status == 200
    assert b.wait_for_log("cache purge from node edge-a ({'url': 'http://media.fleet.test/marker'})")
    assert b.log_text().count("cache clear from node") == 0
    assert a.log_text().count("cache clear from node edge-b") == 1


def test_redis_killed_mid_load_fails_no_request(fleet: Any, redis: RedisServer) -> None:
    a, b, (admin_a, admin_b), _ = fleet
    statuses: Counter = Counter()
    errors: List[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(proxy: ProxyProcess, number: int) -> None:
        for index in range(2000):  # bounded; stopped by the event long before
            if stop.is_set():
                return
            try:
                status, _, _ = get(proxy, f"/load/{number}/{index % 50}")
            except Exception as error:  # a failed request is what this test looks for
                with lock:
                    errors.append(f"{type(error).__name__}: {error}")
                continue
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=client, args=(proxy, n)) for n, proxy in enumerate((a, b, a, b))]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: sum(statuses.values()) >= 100, 20.0, "load before the kill")
        redis.kill()
        for admin in (admin_a, admin_b):
            wait_until(lambda admin=admin: admin.get("/health").json.get("status") == "degraded", 10.0, "degraded")
        health = admin_a.get("/health")
        assert health.status == 200 and "unreachable" in health.json["degraded"][0], health
        assert metric(admin_a.get("/metrics").raw.decode(), "speedproxy_redis_up") == 0
        assert admin_a.get("/api/v1/cluster/nodes").status == 503
        seen = sum(statuses.values())
        wait_until(lambda: sum(statuses.values()) >= seen + 100, 20.0, "load while Redis is gone")
        redis.start()
        for admin in (admin_a, admin_b):
            wait_until(lambda admin=admin: _names(admin) == ["edge-a", "edge-b"], 15.0, "the fleet back")
        assert admin_a.get("/health").json["status"] == "healthy"
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors[:5]
    assert set(statuses) == {200}, statuses
    for proxy in (a, b):  # one line per outage and node (the workers' links are quiet)
        assert proxy.log_text().count("limits and sessions fall back to this host's own") == 1


def test_a_single_process_node_is_part_of_the_fleet(stack: Any, redis: RedisServer) -> None:
    origin = Origin()
    origin.server.start()
    stack.backends.append(origin.server)
    a = stack.proxy(config=node_config(origin.server, redis.url, "edge-a", CACHED))
    solo = stack.proxy(config=node_config(origin.server, redis.url, "edge-solo", CACHED, workers=0))
    admin_a, admin_solo = AdminClient.of(a, KEY), AdminClient.of(solo, KEY)
    for admin in (admin_a, admin_solo):
        wait_until(lambda admin=admin: _names(admin) == ["edge-a", "edge-solo"], 15.0, "both nodes listed")
    assert metric(admin_solo.get("/metrics").raw.decode(), "speedproxy_redis_up") == 1
    _stored(a, admin_a, "/solo/x")
    assert get(solo, "/solo/x")[0] == 200
    wait_until(lambda: any(k.endswith("/solo/x") for k in _keys(admin_solo)), 5.0, "stored on the single process")
    assert admin_solo.post("/api/v1/cache/purge", {"url": f"http://{SITE}/solo/x"}).status == 200
    wait_until(lambda: not any(k.endswith("/solo/x") for k in _keys(admin_a)), 5.0, "the purge to reach edge-a")


def test_check_names_a_bad_cluster_setting(tmp_path: Any) -> None:
    from speedproxy.testing import check_config

    path = tmp_path / "speedproxy.yaml"
    path.write_text("cluster:\n  redis: \"redis://a,b/0\"\n  node_name: edge-1\naccounting:\n  redis_stream: s\n")
    done = check_config(path)
    assert done.returncode == 1
    output = (done.stdout or "") + (done.stderr or "")
    assert f"{path}:2: cluster.redis: a redis:// address names one server" in output, output
    assert f"{path}:5: accounting.redis_stream: needs cluster.redis" in output, output
