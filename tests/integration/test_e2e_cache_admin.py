"""The cache's operator side end to end: ``/cache/*``, purge, warm-up, metrics, cascading.

Real ``twistd speedproxy`` processes with 2 workers, a memory tier each and
a disk tier they share, in front of an origin whose answers may be cached
for a minute.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from speedproxy.testing import BackendExchange, HTTPBackend, ProxyProcess, backend_entry, deep_merge, proxy_config, wait_until

from admin_support import AdminClient, proxy_get

KEY = "cache-admin-Key-42"
CACHED = {"routing": {"default": {"cache": {"enabled": True}}}}


class Origin:
    """Answers every path with a cacheable body and counts requests per path."""

    def __init__(self, name: str = "origin") -> None:
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self.server = HTTPBackend(self._answer, name=name)

    def _answer(self, exchange: BackendExchange) -> None:
        path = exchange.request.path
        with self._lock:
            self.counts[path] += 1
            serial = self.counts[path]
        exchange.send(200, f"{path} #{serial}".encode(), [("Cache-Control", "max-age=60")])

    def seen(self, path: str) -> int:
        with self._lock:
            return self.counts[path]


def _config(origin: Origin, disk: Any, **extra: Any) -> Dict[str, Any]:
    config = deep_merge(proxy_config(origin.server, workers=2), CACHED)
    config["cache"] = {"disk_path": str(disk)}
    return deep_merge(config, extra)


@pytest.fixture(scope="module")
def env(module_stack, tmp_path_factory):
    origin = Origin()
    origin.server.start()
    module_stack.backends.append(origin.server)
    disk = tmp_path_factory.mktemp("cache-disk")
    proxy = module_stack.proxy(config=_config(origin, disk, admin={"api_key": KEY}))
    return proxy, AdminClient.of(proxy, KEY), origin


def _url(proxy: ProxyProcess, path: str) -> str:
    return f"http://{proxy.host}:{proxy.port}{path}"


def _status(headers: Dict[str, str]) -> str:
    return headers.get("cache-status", "")


def _hit(headers: Dict[str, str]) -> bool:
    # The last member is the cache nearest the client (RFC 9211).
    return "; hit" in _status(headers).split(",")[-1]


def _store(proxy: ProxyProcess, origin: Origin, path: str) -> None:
    """Fetch ``path`` until it is served from the cache (each worker: from memory or disk)."""
    status, headers, _ = proxy_get(proxy, path)
    assert status == 200 and "speedproxy" in _status(headers), headers
    wait_until(lambda: all(_hit(proxy_get(proxy, path)[1]) for _ in range(4)), 10.0, f"{path} to be a hit")
    assert origin.seen(path) == 1


# -- shapes and errors -------------------------------------------------------------


CALLS: List[Tuple[str, str, Any]] = [
    ("GET", "/cache/info", None),
    ("GET", "/cache/keys", None),
    ("GET", "/cache/search?q=x", None),
    ("POST", "/cache/clear?confirm=yes", None),
    ("DELETE", "/cache/clear?confirm=yes", None),
    ("POST", "/api/v1/cache/purge", {"url": "http://h/x"}),
    ("POST", "/api/v1/cache/warmup", {"urls": ["http://h/x"]}),
    ("GET", "/api/v1/cache/warmup", None),
]


@pytest.mark.parametrize("method, path, body", CALLS)
def test_every_cache_call_needs_the_key(env, method, path, body) -> None:
    proxy, admin, _ = env
    mark = proxy.log_mark()
    answer = admin.call(method, path, body, key=None)
    assert (answer.status, answer.json["reason"]) == (401, "missing_key")
    assert admin.call(method, path, body, key="wrong").status == 401
    line = proxy.wait_for_log("outcome=denied status=401 reason=missing_key", 5.0, since=mark)
    assert f"method={method} path={path.split('?')[0]}" in line


@pytest.mark.parametrize(
    "method, path, body, field",
    [
        ("POST", "/api/v1/cache/purge", {}, "url"),
        ("POST", "/api/v1/cache/purge", {"url": "http://h/a", "prefix": "http://h/"}, "prefix"),
        ("POST", "/api/v1/cache/purge", {"url": "/relative"}, "url"),
        ("POST", "/api/v1/cache/purge", {"prefix": "h/"}, "prefix"),
        ("POST", "/api/v1/cache/purge", {"url": "http://h/a", "hard": True}, "hard"),
        ("POST", "/api/v1/cache/warmup", {"urls": []}, "urls"),
        ("POST", "/api/v1/cache/warmup", {"urls": ["http://h/a", "/b"]}, "urls[1]"),
        ("POST", "/cache/clear", None, "confirm"),
        ("DELETE", "/cache/clear?type=memory", None, "confirm"),
        ("POST", "/cache/clear?confirm=yes&type=cold", None, "type"),
        ("GET", "/cache/keys?limit=lots", None, "limit"),
        ("GET", "/cache/search", None, "q"),
    ],
)
def test_a_wrong_call_is_a_400_naming_the_field(env, method, path, body, field) -> None:
    proxy, admin, _ = env
    answer = admin.call(method, path, body)
    assert answer.status == 400, answer
    assert (answer.json["error"], answer.json["field"]) == ("bad_request", field)


def test_a_purge_reaches_both_workers(env) -> None:
    proxy, admin, _ = env
    answer = admin.post("/api/v1/cache/purge", {"prefix": _url(proxy, "/nothing-here/")})
    assert answer.status == 200, answer
    workers = answer.json["workers"]
    assert [row["slot"] for row in workers] == [0, 1]
    assert sorted(row["pid"] for row in workers) == sorted(proxy.worker_pids())
    assert answer.json["purged"] == sum(row["purged"] for row in workers) == 0


def test_info_keys_and_search_after_storing(env) -> None:
    proxy, admin, origin = env
    _store(proxy, origin, "/listed/movie-1")
    info = admin.get("/cache/info").json
    assert info["enabled"] is True
    assert info["tiers"]["memory"]["workers"] == 2
    assert info["tiers"]["memory"]["entries"] >= 1
    assert info["tiers"]["disk"]["entries"] >= 1
    assert info["hits"] >= 1 and 0 < info["hit_rate"] <= 1
    assert {"entries", "size_bytes", "max_size_bytes", "misses"} <= set(info)
    url = _url(proxy, "/listed/movie-1")
    keys = admin.get("/cache/keys?prefix=" + _url(proxy, "/listed/")).json
    assert keys["keys"] == [url]
    assert url in admin.get("/cache/search?q=movie-1").json["keys"]
    assert admin.get("/cache/search?pattern=no-such-thing").json["keys"] == []


def test_a_purged_url_is_fetched_again(env) -> None:
    proxy, admin, origin = env
    _store(proxy, origin, "/purge/me?v=1")
    mark = proxy.log_mark()
    answer = admin.post("/api/v1/cache/purge", {"url": _url(proxy, "/purge/me?v=1")})
    assert answer.status == 200, answer
    assert answer.json["purged"] >= 1
    status, headers, body = proxy_get(proxy, "/purge/me?v=1")
    assert (status, body) == (200, b"/purge/me?v=1 #2")
    assert "fwd=miss" in _status(headers)
    assert origin.seen("/purge/me?v=1") == 2
    line = proxy.wait_for_log("path=/api/v1/cache/purge outcome=allowed", 5.0, since=mark)
    assert f'note="url={_url(proxy, "/purge/me?v=1")}"' in line


def test_a_purged_prefix_is_fetched_again(env) -> None:
    proxy, admin, origin = env
    for path in ("/tree/a", "/tree/b"):
        _store(proxy, origin, path)
    answer = admin.post("/api/v1/cache/purge", {"prefix": _url(proxy, "/tree/")})
    assert answer.json["purged"] >= 2
    for path in ("/tree/a", "/tree/b"):
        assert proxy_get(proxy, path)[2] == f"{path} #2".encode()


def test_clear_memory_then_everything(env) -> None:
    proxy, admin, origin = env
    _store(proxy, origin, "/clear/one")
    cleared = admin.post("/cache/clear?type=memory&confirm=yes")
    assert cleared.status == 200, cleared
    assert cleared.json["type"] == "memory" and cleared.json["cleared"] >= 1
    assert len(cleared.json["workers"]) == 2
    assert admin.get("/cache/info").json["tiers"]["memory"]["entries"] == 0
    # The disk tier still has it: no trip to the origin.
    assert proxy_get(proxy, "/clear/one")[2] == b"/clear/one #1"
    assert origin.seen("/clear/one") == 1
    everything = admin.delete("/cache/clear?type=all&confirm=yes")
    assert everything.status == 200 and everything.json["type"] == "all"
    info = admin.get("/cache/info").json
    assert info["tiers"]["memory"]["entries"] == 0
    assert proxy_get(proxy, "/clear/one")[2] == b"/clear/one #2"


def test_warmup_fills_the_cache(env) -> None:
    proxy, admin, origin = env
    urls = [_url(proxy, "/warm/a"), _url(proxy, "/warm/b")]
    started = admin.post("/api/v1/cache/warmup", {"urls": urls})
    assert started.status == 202, started
    job = started.json
    assert (job["total"], job["state"]) == (2, "running")

    def finished() -> Any:
        body = admin.get(job["status_url"]).json
        return body if body["state"] == "done" else None

    done = wait_until(finished, 10.0, "the warm-up job to finish")
    assert (done["done"], done["failed"], done["by_status"]) == (2, 0, {"200": 2})
    assert sorted(row["url"] for row in done["recent"]) == urls
    assert sorted(row["worker"] for row in done["recent"]) == [0, 1]
    for path in ("/warm/a", "/warm/b"):
        for _ in range(4):  # new connections: both workers (memory or disk)
            status, headers, body = proxy_get(proxy, path)
            assert status == 200 and _hit(headers), headers
            assert body == f"{path} #1".encode()
        assert origin.seen(path) == 1
    assert any(row["id"] == job["id"] for row in admin.get("/api/v1/cache/warmup").json["jobs"])
    assert admin.get("/api/v1/cache/warmup/unknown").status == 404


def test_metrics_count_results_origin_requests_and_tiers(env) -> None:
    proxy, admin, origin = env
    _store(proxy, origin, "/metrics/x")
    text = admin.get("/metrics", key=None).raw.decode()

    def value(pattern: str) -> float:
        match = re.search(r"^" + re.escape(pattern) + r" (\S+)$", text, re.M)
        assert match, pattern
        return float(match.group(1))

    assert value('speedproxy_cache_requests_total{result="hit",route="default"}') >= 4
    assert value('speedproxy_cache_requests_total{result="miss",route="default"}') >= 1
    assert value('speedproxy_origin_requests_total{route="default"}') >= 1
    assert value('speedproxy_cache_objects{tier="disk"}') >= 1
    assert value('speedproxy_cache_bytes{tier="disk"}') > 0
    wait_until(lambda: "speedproxy_cache_bytes{tier=\"memory\"} 0.0" not in admin.get("/metrics").raw.decode(),
               5.0, "the memory tier's bytes to be published")
    assert 'speedproxy_cache_evictions_total{tier="memory"}' in text
    stats = admin.get("/stats", key=None).json
    assert stats["cache"]["requests"]["hit"] >= 4
    assert stats["routes"][0]["cache"]["origin_requests"] >= 1


# -- cascading to an upstream speedproxy -----------------------------------------------------


def test_a_purge_cascades_to_the_upstream_speedproxy_without_looping(stack, tmp_path) -> None:
    origin = Origin()
    origin.server.start()
    stack.backends.append(origin.server)
    cascade = deep_merge(CACHED, {"cache": {"cascade_purge": True}})
    # B is nearer the origin; A's backend is B.  B also has A as a backend
    # with an admin_url (a loop a config mistake could make).
    b = ProxyProcess(deep_merge(proxy_config(origin.server, workers=2), cascade), directory=tmp_path / "b")
    a = ProxyProcess(deep_merge(proxy_config((b.host, b.port), workers=2), cascade), directory=tmp_path / "a")
    a.config["backends"]["default"][0]["admin_url"] = f"http://{b.host}:{b.admin_port}"
    b.config["backends"]["loop"] = [
        backend_entry((a.host, a.port), id="a", admin_url=f"http://{a.host}:{a.admin_port}")
    ]
    stack.proxies += [b, a]
    b.start()
    a.start()
    admin_a, admin_b = AdminClient.of(a), AdminClient.of(b)

    # One worker of each proxy stores it; on the same connection it is a hit at A.
    connection = http.client.HTTPConnection(a.host, a.port, timeout=10)
    try:
        answers = []
        for _ in range(2):
            connection.request("GET", "/chain")
            response = connection.getresponse()
            response.read()
            answers.append((response.status, response.getheader("Cache-Status") or ""))
    finally:
        connection.close()
    assert [status for status, _ in answers] == [200, 200]
    assert "; hit" in answers[1][1].split(",")[-1]
    assert origin.seen("/chain") == 1

    url = _url(a, "/chain")
    answer = admin_a.post("/api/v1/cache/purge", {"url": url})
    assert answer.status == 200, answer
    body = answer.json
    assert len(body["workers"]) == 2
    (upstream,) = body["upstreams"]
    assert (upstream["backend"], upstream["status"]) == ("b0", 200)
    assert upstream["result"]["purged"] >= 1
    assert len(upstream["result"]["workers"]) == 2
    # B forwarded to A, which had already acted on this purge: it did nothing.
    (back,) = upstream["result"]["upstreams"]
    assert back["backend"] == "a" and back["result"]["skipped"] is True
    assert back["result"]["purge_path"] == [body["node"], upstream["result"]["node"]]

    status, headers, data = proxy_get(a, "/chain")
    assert (status, data) == (200, b"/chain #2")
    assert origin.seen("/chain") == 2

    # Starting at B: B purges and forwards to A, which knows B is on the path.
    cleared = admin_b.post("/cache/clear?confirm=yes&type=memory")
    assert cleared.status == 200, cleared
    (to_a,) = cleared.json["upstreams"]
    assert to_a["status"] == 200 and to_a["result"]["cleared"] >= 0
    (a_to_b,) = to_a["result"]["upstreams"]
    assert a_to_b.get("skipped") or a_to_b["result"]["skipped"] is True
    # B's audit line of A's purge names the path it came through.
    line = b.wait_for_log(f"via={body['node']}", 5.0)
    assert f'note="url={url} via={body["node"]}"' in line


def test_single_process_mode_serves_the_same_calls(stack, tmp_path) -> None:
    origin = Origin()
    origin.server.start()
    stack.backends.append(origin.server)
    config = _config(origin, tmp_path / "disk")
    config["server"]["workers"] = 0
    proxy = stack.proxy(config=config)
    admin = AdminClient.of(proxy)
    _store(proxy, origin, "/single/x")
    info = admin.get("/cache/info").json
    assert info["enabled"] is True and info["tiers"]["memory"]["workers"] == 1
    assert admin.get("/cache/keys").json["keys"] == [_url(proxy, "/single/x")]
    purged = admin.post("/api/v1/cache/purge", {"url": _url(proxy, "/single/x")})
    assert purged.status == 200, purged
    assert [row["slot"] for row in purged.json["workers"]] == [0] and purged.json["purged"] >= 1
    assert proxy_get(proxy, "/single/x")[2] == b"/single/x #2"
    job = admin.post("/api/v1/cache/warmup", {"urls": [_url(proxy, "/single/w")]}).json
    done = wait_until(lambda: admin.get(job["status_url"]).json["state"] == "done" and admin.get(job["status_url"]).json,
                      10.0, "the warm-up job")
    assert (done["done"], done["failed"]) == (1, 0)
    assert _hit(proxy_get(proxy, "/single/w")[1]) and origin.seen("/single/w") == 1
    assert admin.post("/cache/clear?confirm=yes").json["cleared"] >= 1
    text = admin.get("/metrics").raw.decode()
    assert 'speedproxy_cache_objects{tier="disk"}' in text
    assert 'speedproxy_cache_requests_total{result="hit",route="default"}' in text


def _data_path_reports_speedproxies() -> bool:
    root = Path(__file__).resolve().parents[2] / "speedproxy"
    return any("saw_speedproxy(" in path.read_text() for folder in ("proxy", "cache") for path in (root / folder).glob("*.py"))


@pytest.mark.skipif(not _data_path_reports_speedproxies(), reason="the data path does not report X-Speedproxy yet")
def test_upstream_shows_a_backend_that_is_a_speedproxy(stack) -> None:
    origin = Origin()
    origin.server.start()
    stack.backends.append(origin.server)
    inner = stack.proxy(origin.server, workers=2)
    outer = stack.proxy((inner.host, inner.port), workers=2)
    for _ in range(3):
        assert proxy_get(outer, "/who")[0] == 200
    (backend,) = AdminClient.of(outer).get("/upstream").json["upstreams"]["default"]["backends"]
    assert backend["is_speedproxy"] is True
    assert backend["version"] and backend["check_count"] >= 1 and backend["last_checked"] > 0
    (plain,) = AdminClient.of(inner).get("/upstream").json["upstreams"]["default"]["backends"]
    assert (plain["is_speedproxy"], plain["version"], plain["check_count"]) == (False, None, 0)
