"""Admin API, config: GET/PUT /api/v1/config against 2 live workers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from speedproxy.config import load_config
from speedproxy.testing import backend_entry

from admin_support import AdminClient, proxy_get


def _backend_of(proxy: Any, path: str = "/who") -> str:
    status, _, body = proxy_get(proxy, path)
    assert status == 200, body
    return json.loads(body)["backend"]


@pytest.fixture
def pair(stack):
    """A proxy of its own, for tests that change its config."""
    old = stack.backend(name="old")
    new = stack.backend(name="new")
    proxy = stack.proxy(old, workers=2)
    return proxy, AdminClient.of(proxy), old, new


@pytest.fixture(scope="module")
def shared(module_stack):
    """A proxy shared by the tests that must leave its config untouched."""
    old = module_stack.backend(name="old")
    new = module_stack.backend(name="new")
    proxy = module_stack.proxy(old, workers=2)
    return proxy, AdminClient.of(proxy), old, new


def test_get_config_has_version_source_and_the_file_layout(shared) -> None:
    proxy, admin, old, _ = shared
    answer = admin.get("/api/v1/config")
    assert answer.status == 200
    body = answer.json
    assert body["config_version"] == 1
    assert body["source"] == str(proxy.config_path)
    config = body["config"]
    assert config["server"]["workers"] == 2
    assert config["server"]["slow_request_threshold"] == "1s"
    assert config["backends"]["default"][0]["port"] == old.port
    assert config["admin"]["api_key"] == ""
    assert config["admin"]["max_body_size"] == 1024 * 1024
    # The TMDB proxy's /config shows the same.
    assert admin.get("/config").json["config"] == config


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda c: c["server"].__setitem__("port", "eighty"), "server.port"),
        (lambda c: c["routing"]["default"].__setitem__("upstream", "nope"), "routing.default.upstream"),
        (lambda c: c["backends"]["default"][0].__setitem__("weight", -5), "backends.default[0].weight"),
        (lambda c: c.__setitem__("bogus", {}), "bogus"),
        (lambda c: c["server"].__setitem__("read_timeout", "soon"), "server.read_timeout"),
        (lambda c: c["routing"]["default"].__setitem__("load_balancer", "random"), "routing.default.load_balancer"),
    ],
)
def test_put_invalid_config_is_refused_and_changes_nothing(shared, mutate, field) -> None:
    proxy, admin, old, new = shared
    config = admin.get("/api/v1/config").json["config"]
    config["backends"]["default"] = [backend_entry(new, id="b0")]  # would switch traffic if applied
    mutate(config)
    answer = admin.put("/api/v1/config", config)
    assert answer.status == 400, answer
    assert answer.json["error"] == "invalid_config"
    assert answer.json["field"] == field
    assert answer.json["problems"]
    assert admin.get("/api/v1/config").json["config_version"] == 1
    for _ in range(6):
        assert _backend_of(proxy) == "old"
    assert not new.requests


@pytest.mark.parametrize(
    "raw, field",
    [
        (b"{oops", None),
        (b'"a string"', None),
        (b'{"config": {}, "persist": "maybe"}', "persist"),
        (b'{"config": {}, "config_version": "one"}', "config_version"),
        (b'{"config": {}, "extra": 1}', "extra"),
    ],
)
def test_put_malformed_bodies(shared, raw, field) -> None:
    proxy, admin, _, _ = shared
    answer = admin.call("PUT", "/api/v1/config", raw=raw)
    assert answer.status == 400, answer
    assert answer.json.get("field") == field
    assert admin.get("/api/v1/config").json["config_version"] == 1


def test_put_valid_config_is_live_when_the_call_returns(pair) -> None:
    proxy, admin, old, new = pair
    assert _backend_of(proxy) == "old"
    current = admin.get("/api/v1/config").json
    config = current["config"]
    config["backends"]["default"] = [backend_entry(new, id="fresh")]
    config["routing"]["api"] = {"path": "/api/", "upstream": "default", "load_balancer": "round_robin"}
    answer = admin.put("/api/v1/config", {"config": config, "config_version": current["config_version"]})
    assert answer.status == 200, answer
    assert answer.json["config_version"] == 2
    assert answer.json["workers"] == 2
    assert "restart_required" not in answer.json
    # Live at once, in both workers (new connections spread over them).
    for index in range(12):
        assert _backend_of(proxy, f"/who/{index}") == "new"
    status = admin.get("/status").json
    assert [w["config_version"] for w in status["workers"]] == [2, 2]
    routes = {row["route"] for row in admin.get("/api/v1/stats/server").json["routes"]}
    assert routes == {"default", "api"}
    # A stale read-modify-write is refused.
    stale = admin.put("/api/v1/config", {"config": config, "config_version": 1})
    assert stale.status == 409, stale
    assert stale.json["config_version"] == 2


def test_put_restart_only_keys_are_reported(pair) -> None:
    proxy, admin, _, _ = pair
    config = admin.get("/api/v1/config").json["config"]
    config["admin"]["listen"] = "127.0.0.1:1"
    answer = admin.put("/api/v1/config", config)
    assert answer.status == 200, answer
    assert answer.json["restart_required"] == ["admin.listen"]


def test_put_persist_writes_the_file_atomically_with_a_backup(pair) -> None:
    proxy, admin, old, new = pair
    original = proxy.config_path.read_text()
    config = admin.get("/api/v1/config").json["config"]
    config["backends"]["default"].append(backend_entry(new, id="b-new", weight=7))
    answer = admin.put("/api/v1/config", dict(config, persist=True))
    assert answer.status == 200, answer
    assert answer.json["persisted"] == str(proxy.config_path)
    assert answer.json["backup"] == str(proxy.config_path) + ".bak"
    assert (proxy.config_path.parent / "speedproxy.yaml.bak").read_text() == original
    written = load_config(str(proxy.config_path))
    assert [b.id for b in written.backends["default"]] == ["b0", "b-new"]
    assert written.backends["default"][1].weight == 7
    assert not [p for p in proxy.config_path.parent.iterdir() if p.name.startswith(".speedproxy.yaml.")]
    # Backend calls can persist too.
    removed = admin.delete("/api/v1/backends/remove?upstream=default&backend_id=b-new&persist=true")
    assert removed.status == 200, removed
    assert [b.id for b in load_config(str(proxy.config_path)).backends["default"]] == ["b0"]
    # And a SIGHUP re-reads what was written: same config, new version.
    proxy.reload()
    assert admin.get("/api/v1/config").json["config"]["backends"]["default"][0]["id"] == "b0"


def test_body_over_the_limit_gets_413(stack) -> None:
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, workers=2, config={"admin": {"max_body_size": "2KiB"}})
    admin = AdminClient.of(proxy)
    big = {"upstream": "default", "id": "x" * 5000, "host": "127.0.0.1", "port": 1}
    answer = admin.post("/api/v1/backends/add", big)
    assert answer.status == 413, answer
    assert answer.json["error"] == "payload_too_large"
    # Chunked bodies are counted as they arrive.
    import http.client

    connection = http.client.HTTPConnection(proxy.host, proxy.admin_port, timeout=10)
    try:
        connection.putrequest("POST", "/api/v1/backends/add")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        for _ in range(4):
            connection.send(b"400\r\n" + b"a" * 0x400 + b"\r\n")
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        assert response.status == 413
        response.read()
    finally:
        connection.close()
    assert admin.get("/api/v1/config").json["config_version"] == 1
    small = admin.post("/api/v1/backends/add", {"upstream": "default", "id": "ok", "host": "127.0.0.1", "port": 1})
    assert small.status == 200, small


def test_reload_ssl_without_tls_is_a_conflict(shared) -> None:
    proxy, admin, _, _ = shared
    answer = admin.post("/api/v1/config/reload-ssl")
    assert answer.status == 409, answer
    assert (answer.json["error"], answer.json["field"]) == ("ssl_disabled", "ssl.enabled")
    assert admin.get("/api/v1/config").json["config_version"] == 1
    assert admin.get("/api/v1/config/reload-ssl").status == 405
