"""Traffic accounting end to end: a ``twistd speedproxy`` (2 workers) counting per key and route.

Counts reach an HTTP collector as JSON batches every ``accounting.interval``
(held while the collector refuses them, then sent; past ``max_buffer``
counted as dropped), or a Redis stream.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterator

import pytest

from speedproxy.testing.redis import RedisServer
from speedproxy.testing import deep_merge, proxy_config, wait_until

from admin_support import AdminClient
from cluster_support import KEY, Collector, get, metric, redis  # noqa: F401 (fixture)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


@pytest.fixture
def collector() -> Iterator[Collector]:
    made = Collector()
    try:
        yield made
    finally:
        made.stop()


def _config(backend: Any, accounting: dict) -> dict:
    config = deep_merge(proxy_config(backend, workers=2), {"admin": {"api_key": KEY}, "accounting": accounting})
    config["routing"]["plain"] = {"path": "/plain/", "upstream": "default"}
    return config


def test_counts_per_key_and_route_reach_the_collector(stack: Any, collector: Collector) -> None:
    backend = stack.backend()
    proxy = stack.proxy(config=_config(backend, {"collector": collector.url, "interval": "500ms",
                                                 "routes": ["default"]}))
    sizes = []
    for index in range(10):
        status, _, body = get(proxy, f"/video/{index}", headers={"X-API-Key": "tenant-a" if index < 6 else "tenant-b"})
        assert status == 200
        sizes.append(len(body))
    for _ in range(3):
        assert get(proxy, "/plain/x", headers={"X-API-Key": "tenant-a"})[0] == 200
    wait_until(lambda: collector.total("requests") >= 10, 10.0, "the counts at the collector")
    a, b = digest("tenant-a"), digest("tenant-b")
    assert collector.total("requests", api_key=a) == 6 and collector.total("requests", api_key=b) == 4
    assert {r["route"] for r in collector.records()} == {"default"}  # /plain/ is not accounted
    assert collector.total("bytes_out") > sum(sizes)  # bodies and heads
    assert collector.total("bytes_in") > 10 * len("GET /video/0 HTTP/1.1\r\n")
    assert all(batch["node"] for batch in collector.batches)
    assert "tenant-a" not in json.dumps(collector.batches)
    text = AdminClient.of(proxy, KEY).get("/metrics").raw.decode()
    assert metric(text, "speedproxy_accounting_records_total") >= 2


def test_a_collector_down_for_a_while_loses_nothing_then_drops_past_the_bound(stack: Any, collector: Collector) -> None:
    backend = stack.backend()
    config = _config(backend, {"collector": collector.url, "interval": "300ms", "max_buffer": 5})
    config["routing"]["default"]["sessions"] = {"required": False, "ttl": "1h", "max_per_client": 16}
    proxy = stack.proxy(config=config)
    admin = AdminClient.of(proxy, KEY)
    collector.refusing = True
    for index in range(4):
        assert get(proxy, "/k", headers={"X-API-Key": f"key-{index}"})[0] == 200
    wait_until(lambda: collector.refused >= 2, 10.0, "refused flushes")
    collector.refusing = False
    wait_until(lambda: collector.total("requests") == 4, 10.0, "the held counts sent")
    assert metric(admin.get("/metrics").raw.decode(), "speedproxy_accounting_dropped_total") == 0
    # Twelve rows: twelve live sessions (verified keys; made-up ones would share one row).
    sessions = [admin.post("/api/v1/sessions", {"route": "default", "client": "127.0.0.1"}).json["id"]
                for _ in range(12)]
    collector.refusing = True
    for session in sessions:
        assert get(proxy, "/k", headers={"Cookie": f"spx_session={session}"})[0] == 200
    wait_until(lambda: metric(admin.get("/metrics").raw.decode(), "speedproxy_accounting_dropped_total") == 7,
               10.0, "rows past the bound counted as dropped")
    collector.refusing = False
    wait_until(lambda: collector.total("requests") == 4 + 5, 10.0, "the 5 kept rows sent")


def test_counts_to_a_redis_stream(stack: Any, redis: RedisServer) -> None:
    backend = stack.backend()
    config = _config(backend, {"redis_stream": "spx:acct", "interval": "300ms"})
    config["cluster"] = {"redis": redis.url, "node_name": "edge-acct"}
    proxy = stack.proxy(config=config)
    for _ in range(5):
        assert get(proxy, "/s", headers={"X-API-Key": "k1"})[0] == 200

    def records() -> list:
        entries = redis.command("XRANGE", "spx:acct", "-", "+") or []
        found = []
        for _, fields in entries:
            values = dict(zip(fields[::2], fields[1::2]))
            assert values[b"node"] == b"edge-acct"
            found += json.loads(values[b"batch"])["records"]
        return found

    wait_until(lambda: sum(r["requests"] for r in records()) == 5, 10.0, "the counts in the stream")
    assert {r["api_key"] for r in records()} == {digest("k1")}


def test_sessions_and_refused_requests_are_counted(stack: Any, collector: Collector) -> None:
    backend = stack.backend()
    config = _config(backend, {"collector": collector.url, "interval": "300ms"})
    config["routing"]["default"].update(
        sessions={"required": True, "cookie": "spx_session", "ttl": "1h", "max_per_client": 3},
        rate_limit={"requests": 1, "per": "1h", "burst": 2},
    )
    proxy = stack.proxy(config=config)
    answer = AdminClient.of(proxy, KEY).post("/api/v1/sessions", {"route": "default", "client": "127.0.0.1"})
    assert answer.status in (200, 201), answer
    session = answer.json["id"]
    statuses = [get(proxy, "/v", headers={"Cookie": f"spx_session={session}"})[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert get(proxy, "/v")[0] == 403  # no session
    wait_until(lambda: collector.total("requests") == 4, 10.0, "the counts at the collector")
    assert collector.total("requests", session=digest(session)) == 3
    assert collector.total("requests", session="") == 1


def test_a_single_process_counts_too(stack: Any, collector: Collector) -> None:
    backend = stack.backend()
    config = _config(backend, {"collector": collector.url, "interval": "300ms"})
    config["server"]["workers"] = 0
    proxy = stack.proxy(config=config)
    for _ in range(3):
        assert get(proxy, "/one", headers={"X-API-Key": "solo"})[0] == 200
    wait_until(lambda: collector.total("requests", api_key=digest("solo")) == 3, 10.0, "the counts at the collector")
