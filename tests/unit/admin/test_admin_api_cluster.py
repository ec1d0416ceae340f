"""``GET /api/v1/cluster/nodes`` (:mod:`speedproxy.admin.api_cluster`) over a fake fleet."""

from __future__ import annotations

from typing import Any, Dict

from twisted.internet.defer import fail, succeed

from speedproxy.cluster.link import RedisDown

from admin_cache_support import CacheControl, call, make_site


class FakeFleet:
    name = "edge-1"

    def __init__(self) -> None:
        self.down = False

    def summary(self) -> Dict[str, Any]:
        return {"address": "redis://r:6379/0", "up": not self.down}

    def nodes(self) -> Any:
        if self.down:
            return fail(RedisDown("connection refused"))
        return succeed({"node": self.name, "redis": self.summary(), "nodes": [{"name": "edge-1"}, {"name": "edge-2"}],
                        "count": 2})


def test_the_fleet_listed_behind_the_key() -> None:
    control = CacheControl("admin: {api_key: k}\n")
    control.fleet = FakeFleet()
    site = make_site(control)
    answer = call(site, "GET", "/api/v1/cluster/nodes", headers={"X-API-Key": "k"})
    assert answer.status == 200
    assert answer.json["enabled"] is True and [n["name"] for n in answer.json["nodes"]] == ["edge-1", "edge-2"]
    assert call(site, "GET", "/api/v1/cluster/nodes").status == 401


def test_redis_unreachable_is_a_503() -> None:
    control = CacheControl("admin: {api_key: k}\n")
    control.fleet = FakeFleet()
    control.fleet.down = True
    answer = call(make_site(control), "GET", "/api/v1/cluster/nodes", headers={"X-API-Key": "k"})
    assert answer.status == 503
    assert answer.json["error"] == "redis_unavailable" and "connection refused" in answer.json["detail"]
    assert answer.json["redis"]["up"] is False


def test_without_a_fleet_this_node_is_alone() -> None:
    control = CacheControl("cluster: {node_name: solo}\n")
    answer = call(make_site(control), "GET", "/api/v1/cluster/nodes")
    assert answer.status == 200
    assert answer.json["enabled"] is False and answer.json["node"] == "solo"
    assert [n["name"] for n in answer.json["nodes"]] == ["solo"] and answer.json["count"] == 1


def test_health_says_degraded_while_redis_is_away() -> None:
    control = CacheControl()
    site = make_site(control)
    control.fleet = FakeFleet()
    control.fleet.degraded = lambda: ["redis redis://r:6379/0 unreachable (refused): limits and sessions are this host's own"]
    health = call(site, "GET", "/health")
    assert (health.status, health.json["status"]) == (200, "degraded")
    assert "unreachable" in health.json["degraded"][0] and health.json["reasons"] == []
    control.fleet.degraded = lambda: []
    health = call(site, "GET", "/health")
    assert (health.status, health.json["status"]) == (200, "healthy") and "degraded" not in health.json
