"""Limits and sessions shared by two ``twistd speedproxy`` nodes through one real Redis.

- 40 requests of one client split over both nodes (and their workers) get
  exactly the route's burst through, the rest 429;
- a session opened on one node is accepted on both; revoked through one
  node's admin API it is refused on both within a second;
- with Redis killed, limits and sessions go on from each host's own state
  and no request fails.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any, Dict, List, Tuple

import pytest

from speedproxy.testing.redis import RedisSentinel, RedisServer, wait_for_replica
from speedproxy.testing import ProxyProcess, wait_until

from admin_support import AdminClient
from cluster_support import KEY, get, node_config, node_names, redis  # noqa: F401 (fixture)

BURST = 12
LIMITED = {"routing": {"default": {"rate_limit": {"requests": 1, "per": "1h", "burst": BURST, "key": "client_ip"}}}}
SESSIONS = {"routing": {"default": {"sessions": {"required": True, "cookie": "spx_session", "ttl": "1h",
                                                 "max_per_client": 3}}}}


def _fleet(stack: Any, redis: RedisServer, extra: Dict[str, Any]) -> Tuple[ProxyProcess, ProxyProcess, AdminClient, AdminClient]:
    backend = stack.backend()
    a = stack.proxy(config=node_config(backend, redis.url, "edge-a", extra))
    b = stack.proxy(config=node_config(backend, redis.url, "edge-b", extra))
    admins = AdminClient.of(a, KEY), AdminClient.of(b, KEY)
    for admin in admins:
        wait_until(lambda admin=admin: admin.get("/api/v1/cluster/nodes").status == 200
                   and node_names(admin.get("/api/v1/cluster/nodes").json) == ["edge-a", "edge-b"], 15.0, "the fleet")
    return a, b, admins[0], admins[1]


def _workers_on_redis(redis: RedisServer, count: int) -> None:
    """Until ``count`` speedproxy links (masters' and workers', by their CLIENT SETNAME) use ``redis``."""

    def linked() -> bool:
        return redis.command("CLIENT", "LIST").decode().count(" name=speedproxy") >= count

    wait_until(linked, 15.0, "the links to connect to Redis")


def test_one_limit_across_both_nodes(stack: Any, redis: RedisServer) -> None:
    a, b, _, _ = _fleet(stack, redis, LIMITED)
    # Warm every worker's link: a request answered from the host's own state
    # would count on that host only (the fallback), which this test is not about.
    for proxy in (a, b):
        for _ in range(6):
            get(proxy, "/warm", headers={"X-Real-IP": "203.0.113.250"})
    _workers_on_redis(redis, 2 * (1 + 2))
    statuses: List[int] = []
    for index in range(40):
        status, headers, _ = get((a, b)[index % 2], f"/item/{index}", headers={"X-Real-IP": "203.0.113.5"})
        statuses.append(status)
        if status == 429:
            assert int(headers["retry-after"]) >= 1
    assert statuses.count(200) == BURST and statuses.count(429) == 40 - BURST, statuses
    assert statuses[:BURST] == [200] * BURST


def _session(admin: AdminClient, client: str) -> str:
    answer = admin.post("/api/v1/sessions", {"route": "default", "client": client})
    assert answer.status in (200, 201), answer
    return answer.json["id"]


def test_a_revoked_session_is_refused_on_both_nodes(stack: Any, redis: RedisServer) -> None:
    a, b, admin_a, admin_b = _fleet(stack, redis, SESSIONS)
    session = _session(admin_a, "127.0.0.1")
    assert session.startswith("F"), session
    cookie = {"Cookie": f"spx_session={session}"}
    for proxy in (a, b):
        wait_until(lambda proxy=proxy: all(get(proxy, "/s", headers=cookie)[0] == 200 for _ in range(4)), 10.0,
                   "the session accepted")
        assert get(proxy, "/s")[0] == 403
    listed = admin_b.get("/api/v1/sessions").json
    assert session in str(listed)
    answer = admin_b.delete(f"/api/v1/sessions/{session}")
    assert answer.status == 200, answer
    revoked = time.monotonic()
    for proxy in (a, b):
        # The first request refused on this node was sent within a second of the revocation...
        for _ in range(200):  # bounded: ~ms each
            sent = time.monotonic() - revoked
            if get(proxy, "/s", headers=cookie)[0] == 403:
                break
        assert sent < 1.0, f"still accepted {sent:.2f}s after the revocation"
        # ...and every worker refuses it from then on.
        assert [get(proxy, "/s", headers=cookie)[0] for _ in range(6)] == [403] * 6


class Load:
    """Clients sending GETs with a session cookie to both nodes until stopped (bounded)."""

    def __init__(self, proxies: Any, headers: Any) -> None:
        """``headers``: a dict, or a function of the request number giving one."""
        self.statuses: Counter = Counter()
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(proxy, n)) for n, proxy in enumerate(proxies)]
        self.headers = headers

    def _run(self, proxy: ProxyProcess, number: int) -> None:
        for index in range(3000):  # bounded; stopped long before
            if self._stop.is_set():
                return
            try:
                headers = self.headers(index) if callable(self.headers) else self.headers
                status = get(proxy, f"/load/{number}/{index}", headers=headers)[0]
            except Exception as error:  # what the test looks for
                with self._lock:
                    self.errors.append(f"{type(error).__name__}: {error}")
                continue
            with self._lock:
                self.statuses[status] += 1

    def count(self) -> int:
        with self._lock:
            return sum(self.statuses.values()) + len(self.errors)

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def more(self, count: int, what: str) -> None:
        seen = self.count()
        wait_until(lambda: self.count() >= seen + count, 30.0, what)


BOTH = {"routing": {"default": {
    "rate_limit": {"requests": 100000, "per": "1s", "key": "client_ip"},
    "sessions": {"required": True, "cookie": "spx_session", "ttl": "1h", "max_per_client": 3},
}}}


def test_redis_killed_mid_load_fails_no_limited_or_session_request(stack: Any, redis: RedisServer) -> None:
    a, b, admin_a, admin_b = _fleet(stack, redis, BOTH)
    cookie = {"Cookie": f"spx_session={_session(admin_a, '127.0.0.1')}"}
    with Load((a, b, a, b), cookie) as load:
        load.more(100, "load before the kill")
        redis.kill()
        for admin in (admin_a, admin_b):
            wait_until(lambda admin=admin: admin.get("/health").json["status"] == "degraded", 10.0, "degraded")
        load.more(200, "load without Redis")
        redis.start()
        for admin in (admin_a, admin_b):
            wait_until(lambda admin=admin: admin.get("/health").json["status"] == "healthy", 15.0, "healthy again")
        load.more(100, "load with Redis back")
    assert not load.errors, load.errors[:5]
    assert set(load.statuses) == {200}, load.statuses
    for proxy in (a, b):  # one line per outage and node, however many workers (and retries)
        assert proxy.log_text().count("limits and sessions fall back to this host's own") == 1


@pytest.fixture
def sentinel_fleet(redis: RedisServer) -> Any:
    replica = RedisServer("replica").start(replica_of=redis.port)
    sentinel = None
    try:
        wait_for_replica(redis)
        sentinel = RedisSentinel(redis.port).start()
        yield redis, replica, sentinel
    finally:
        if sentinel is not None:
            sentinel.cleanup()
        replica.cleanup()


def test_a_sentinel_failover_loses_no_limit_or_session(stack: Any, sentinel_fleet: Any) -> None:
    master, replica, sentinel = sentinel_fleet
    address = f"sentinel://127.0.0.1:{sentinel.port}/{sentinel.service}/0"
    backend = stack.backend()
    extra = {"routing": {"default": {
        "rate_limit": {"requests": 1, "per": "1h", "burst": BURST, "key": "header:X-API-Key"},
        "sessions": {"required": True, "cookie": "spx_session", "ttl": "1h", "max_per_client": 3},
    }}}
    a = stack.proxy(config=node_config(backend, address, "edge-a", extra))
    b = stack.proxy(config=node_config(backend, address, "edge-b", extra))
    admin_a, admin_b = AdminClient.of(a, KEY), AdminClient.of(b, KEY)
    for admin in (admin_a, admin_b):
        wait_until(lambda admin=admin: admin.get("/api/v1/cluster/nodes").status == 200
                   and node_names(admin.get("/api/v1/cluster/nodes").json) == ["edge-a", "edge-b"], 15.0, "the fleet")
    session = _session(admin_a, "127.0.0.1")
    limited = {"Cookie": f"spx_session={session}", "X-API-Key": "tenant-1"}
    _workers_on_redis(master, 2 * (1 + 2))
    spent = [get((a, b)[i % 2], "/limited", headers=limited)[0] for i in range(BURST // 2)]
    assert spent == [200] * (BURST // 2)
    assert master.command("WAIT", 1, 5000) == 1  # the standby has every write so far
    # Each load request spends a token of its own key: none is limited.
    with Load((a, b), lambda index: {"Cookie": f"spx_session={session}", "X-API-Key": f"load-{index}"}) as load:
        load.more(50, "load before the failover")
        master.kill()
        wait_until(lambda: sentinel.master() == replica.port, 30.0, "the Sentinel to promote the replica")
        for admin in (admin_a, admin_b):
            wait_until(lambda admin=admin: admin.get("/api/v1/cluster/nodes").json.get("redis", {}).get("server")
                       == f"127.0.0.1:{replica.port}", 30.0, "the node on the new master")
        _workers_on_redis(replica, 2 * (1 + 2))
        load.more(50, "load after the failover")
    assert not load.errors, load.errors[:5]
    assert set(load.statuses) == {200}, load.statuses
    # The bucket and the session came through the failover: half the burst is left, shared.
    after = [get((a, b)[i % 2], "/limited", headers=limited)[0] for i in range(BURST)]
    assert after.count(200) == BURST - BURST // 2, after
    assert get(b, "/s", headers={"Cookie": f"spx_session={session}"})[0] == 200
