"""Admin API, monitoring and the other endpoints, against 2 live workers."""

from __future__ import annotations

import threading
from typing import Any, List

import pytest

from speedproxy.testing import delayed, wait_until

from admin_support import AdminClient, proxy_get

GET_ENDPOINTS = [
    "/health",
    "/status",
    "/stats",
    "/upstream",
    "/config",
    "/cache/info",
    "/cache/keys",
    "/cache/search?q=movie",
    "/api/v1/cache/warmup",
    "/api/v1/config",
    "/api/v1/backends",
    "/api/v1/backends?upstream=default",
    "/api/v1/stats/server",
    "/api/v1/stats/backend",
    "/api/v1/stats/backend?upstream=default",
    "/api/v1/stats/backend?upstream=default&backend_id=b0",
    "/api/v1/performance/health",
    "/api/v1/performance/stats",
    "/api/v1/performance/dashboard",
    "/api/v1/performance/operations",
    "/api/v1/performance/active-requests",
    "/api/v1/performance/slow-requests",
    "/api/v1/performance/resource-usage",
    "/api/v1/performance/alerts/thresholds",
]


@pytest.fixture(scope="module")
def env(module_stack):
    origin = module_stack.backend(name="origin")
    origin.route("/slow", delayed(0.35))
    origin.route("/hold", delayed(1.2))
    proxy = module_stack.proxy(origin, workers=2, slow_request_threshold="250ms")
    return proxy, AdminClient.of(proxy), origin


@pytest.mark.parametrize("path", GET_ENDPOINTS)
def test_every_get_endpoint_answers_json(env, path) -> None:
    proxy, admin, _ = env
    answer = admin.get(path)
    assert answer.status == 200, answer
    assert answer.headers["content-type"] == "application/json"
    assert isinstance(answer.json, dict)
    head = admin.call("HEAD", path)
    assert head.status == 200 and head.raw == b""


def test_health_status_stats_upstream_metrics(env) -> None:
    proxy, admin, origin = env
    assert proxy_get(proxy, "/warm")[0] == 200
    health = admin.get("/health").json
    assert health["status"] == "healthy"
    assert (health["workers"], health["workers_serving"]) == (2, 2)
    assert health["routes"]["default"]["healthy_backends"] == 1
    status = admin.get("/status").json
    assert status["mode"] == "master"
    assert status["workers_ready"] == 2
    assert len({w["pid"] for w in status["workers"]}) == 2
    assert status["api_key_required"] is False
    stats = admin.get("/stats").json
    assert stats["totals"]["requests"] >= 1
    upstream = admin.get("/upstream").json["upstreams"]["default"]
    assert upstream["routes"] == ["default"]
    assert upstream["backends"][0]["address"] == f"http://{origin.host}:{origin.port}"
    assert upstream["healthy_backends"] == 1
    metrics = admin.get("/metrics")
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert b"speedproxy_requests" in metrics.raw
    server = admin.get("/api/v1/stats/server").json
    assert len(server["workers"]) == 2
    assert set(server["rates"]) == {"last_10s", "last_60s", "last_300s", "since_start"}
    backend = admin.get("/api/v1/stats/backend?upstream=default&backend_id=b0").json["backend"]
    assert backend["runtime"]["workers"] == 2
    assert backend["stats"]["requests"] >= 1


def test_unknown_paths_methods_and_parameters(env) -> None:
    proxy, admin, _ = env
    for path in ("/nope", "/api", "/api/v1", "/api/v1/nope", "/health/extra", "/api/v1/performance/alerts"):
        answer = admin.get(path)
        assert answer.status == 404, (path, answer)
        assert answer.json["error"] == "not_found"
    wrong = admin.get("/api/v1/backends/add")
    assert wrong.status == 405
    assert wrong.headers["allow"] == "POST"
    assert admin.post("/health").status == 405
    assert admin.delete("/api/v1/config").status == 405
    assert admin.get("/api/v1/stats/backend?upstream=nope").status == 404
    assert admin.get("/api/v1/stats/backend?upstream=default&backend_id=zz").status == 404
    assert admin.get("/api/v1/stats/backend?backend_id=b0").json["field"] == "upstream"
    assert admin.get("/api/v1/performance/active-requests?limit=lots").json["field"] == "limit"
    assert admin.get("/api/v1/performance/resource-usage?interval=60").status == 400
    assert admin.get("/api/v1/performance/slow-requests?sort=colour").json["field"] == "sort"


def test_cache_endpoints_report_an_empty_disabled_cache(env) -> None:
    # No route caches here: every call answers, about an empty, disabled cache.
    proxy, admin, _ = env
    info = admin.get("/cache/info").json
    assert (info["enabled"], info["entries"], info["hit_rate"]) == (False, 0, 0.0)
    assert admin.get("/cache/keys").json["keys"] == []
    assert admin.get("/cache/search?pattern=tv").json == {
        "enabled": False, "keys": [], "total": 0, "limit": 100, "query": "tv",
    }
    refused = admin.post("/cache/clear")
    assert (refused.status, refused.json["field"]) == (400, "confirm")
    assert admin.post("/cache/clear?confirm=no").status == 400
    cleared = admin.post("/cache/clear?confirm=yes")
    assert (cleared.status, cleared.json["cleared"]) == (200, 0)
    assert len(cleared.json["workers"]) == 2
    scoped = admin.delete("/cache/clear?confirm=yes&pattern=http://example.com/3/movie/*")
    assert scoped.json["scope"] == "http://example.com/3/movie/"


def test_slow_and_active_requests(env) -> None:
    proxy, admin, _ = env
    mark = proxy.log_mark()
    done: List[Any] = []
    thread = threading.Thread(target=lambda: done.append(proxy_get(proxy, "/hold?id=7")))
    thread.start()

    def held() -> Any:
        answer = admin.get("/api/v1/performance/active-requests").json
        return answer if any(row["path"] == "/hold?id=7" for row in answer["requests"]) else None

    active = wait_until(held, 5.0, "the held request to be listed")
    row = next(row for row in active["requests"] if row["path"] == "/hold?id=7")
    assert row["method"] == "GET"
    assert row["backend_id"] == "b0"
    assert row["upstream"] == "default"
    assert row["age_ms"] >= 0
    assert active["count"] >= 1
    assert len(active["per_worker"]) == 2
    assert proxy_get(proxy, "/slow/one")[0] == 200
    assert proxy_get(proxy, "/quick")[0] == 200
    thread.join(5.0)
    assert done and done[0][0] == 200
    slow = admin.get("/api/v1/performance/slow-requests?sort=duration").json
    assert slow["threshold_ms"] == 250.0
    paths = [row["path"] for row in slow["requests"]]
    assert paths[:2] == ["/hold?id=7", "/slow/one"]
    assert "/quick" not in paths
    assert slow["requests"][0]["duration_ms"] >= 1000
    assert slow["requests"][0]["status"] == 200
    assert slow["total"] >= 2
    line = proxy.wait_for_log("slow request: GET /hold?id=7", 5.0, since=mark)
    assert "threshold 250 ms" in line
    operations = admin.get("/api/v1/performance/operations").json
    names = {op["operation"]: op for op in operations["slow_operations"]}
    assert names["GET /hold"]["count"] >= 1
    assert operations["routes"][0]["route"] == "default"
    assert admin.get("/api/v1/performance/active-requests").json["count"] == 0


def test_resource_usage_covers_master_and_workers(env) -> None:
    proxy, admin, _ = env
    usage = admin.get("/api/v1/performance/resource-usage?interval=0.1").json
    roles = [row["role"] for row in usage["processes"]]
    assert roles == ["master", "worker", "worker"]
    assert {row["pid"] for row in usage["processes"]} == set(proxy.pids())
    for row in usage["processes"]:
        assert row["alive"] is True
        assert row["rss_bytes"] > 1_000_000
        assert row["open_fds"] > 3
        assert row["cpu_percent"] is not None
    assert usage["total"]["processes"] == 3


def test_performance_health_stats_dashboard(env) -> None:
    proxy, admin, _ = env
    for _ in range(3):
        proxy_get(proxy, "/p")
    health = admin.get("/api/v1/performance/health").json
    assert health["status"] in ("healthy", "degraded")
    assert health["workers_serving"] == 2
    stats = admin.get("/api/v1/performance/stats").json
    assert stats["windows"]["since_start"]["requests"] >= 3
    assert stats["slow_requests"]["threshold_ms"] == 250.0
    dashboard = admin.get("/api/v1/performance/dashboard?limit=5").json
    assert set(dashboard) >= {"health", "stats", "resource_usage", "backends", "active_requests", "slow_requests"}
    assert dashboard["backends"][0]["id"] == "b0"


def test_thresholds_get_put_and_alerts(env) -> None:
    proxy, admin, _ = env
    current = admin.get("/api/v1/performance/alerts/thresholds").json
    assert current["thresholds"]["error_rate"] == 0.05
    assert current["slow_request_threshold"] == 0.25
    version = current["config_version"]
    updated = admin.put("/api/v1/performance/alerts/thresholds", {"rss_mb": 1, "cpu_percent": 95})
    assert updated.status == 200, updated
    assert updated.json["thresholds"]["rss_mb"] == 1.0
    assert updated.json["config_version"] == version
    health = admin.get("/api/v1/performance/health").json
    assert health["status"] == "degraded"
    assert any(alert["metric"] == "rss_mb" for alert in health["alerts"])
    for body, field in (({"bogus": 1}, "bogus"), ({"error_rate": "high"}, "error_rate"),
                        ({"error_rate": -1}, "error_rate"), ({"slow_request_threshold": "soon"}, "slow_request_threshold")):
        answer = admin.put("/api/v1/performance/alerts/thresholds", body)
        assert (answer.status, answer.json.get("field")) == (400, field), answer
    # slow_request_threshold is config: a change on every worker.
    answer = admin.put("/api/v1/performance/alerts/thresholds", {"thresholds": {"slow_request_threshold": "300ms", "rss_mb": 1024}})
    assert answer.status == 200, answer
    assert answer.json["config_version"] == version + 1
    assert answer.json["slow_request_threshold"] == 0.3
    assert admin.get("/api/v1/config").json["config"]["server"]["slow_request_threshold"] == "300ms"
    assert admin.get("/api/v1/performance/slow-requests").json["threshold_ms"] == 300.0
    assert admin.put("/api/v1/performance/alerts/thresholds", {"slow_request_threshold": 0.25}).status == 200


def test_report_sets_the_load_seen_by_every_worker(env) -> None:
    proxy, admin, _ = env
    answer = admin.post("/api/v1/report", {"backend_id": "b0", "cpu_usage": 80, "memory_usage": 50,
                                           "load_avg_1": 2.0, "cpu_count": 4})
    assert answer.status == 200, answer
    # (2 * 0.8 + 0.5 + 0.5) / 4
    assert answer.json["reported_load"] == 0.65
    assert answer.json["upstreams"] == ["default"]
    assert answer.json["workers"] == 2
    row = admin.get("/api/v1/backends?upstream=default").json["backends"][0]
    assert row["runtime"]["reported_load"] == 0.65
    assert row["runtime"]["workers"] == 2
    assert row["last_report"]["cpu_usage"] == 80
    assert admin.post("/api/v1/report", {"backend_id": "b0", "upstream": "default", "cpu_usage": 10}).json["reported_load"] == 0.1


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"backend_id": "b0", "cpu_usage": 150}, 400, "cpu_usage"),
        ({"backend_id": "b0", "cpu_usage": "busy"}, 400, "cpu_usage"),
        ({"backend_id": "b0", "memory_usage": -1}, 400, "memory_usage"),
        ({"backend_id": "b0", "load_avg_1": 1, "cpu_count": 0}, 400, "cpu_count"),
        ({"backend_id": "b0"}, 400, "cpu_usage"),
        ({"cpu_usage": 5}, 400, "backend_id"),
        ({"backend_id": "b0", "cpu_usage": 5, "gpu": 1}, 400, "gpu"),
        ({"backend_id": "zz", "cpu_usage": 5}, 404, "backend_id"),
        ({"backend_id": "b0", "upstream": "nope", "cpu_usage": 5}, 404, "upstream"),
    ],
)
def test_report_refuses_bad_bodies(env, body, status, field) -> None:
    proxy, admin, _ = env
    answer = admin.post("/api/v1/report", body)
    assert (answer.status, answer.json.get("field")) == (status, field), answer


def test_malformed_json_is_400(env) -> None:
    proxy, admin, _ = env
    for path in ("/api/v1/report", "/api/v1/backends/add"):
        answer = admin.call("POST", path, raw=b'{"backend_id": ')
        assert answer.status == 400
        assert "malformed JSON" in answer.json["detail"]
