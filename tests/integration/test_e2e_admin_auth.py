"""Admin API, security: API key, audit log, refusing an open network listener."""

from __future__ import annotations

import os
import re

import pytest

from speedproxy.testing import ProxyProcess, ProxyStartError, backend_entry, delayed, free_port, wait_until

from admin_support import AdminClient, proxy_get

KEY = "s3cret-Key-0123456789"

OPEN = ["/health", "/status", "/stats", "/upstream", "/metrics"]
PROTECTED_GETS = [
    "/config",
    "/cache/info",
    "/cache/keys",
    "/cache/search?q=x",
    "/api/v1/cache/warmup",
    "/api/v1/config",
    "/api/v1/backends",
    "/api/v1/stats/server",
    "/api/v1/stats/backend",
    "/api/v1/performance/health",
    "/api/v1/performance/stats",
    "/api/v1/performance/dashboard",
    "/api/v1/performance/operations",
    "/api/v1/performance/active-requests",
    "/api/v1/performance/slow-requests",
    "/api/v1/performance/resource-usage",
    "/api/v1/performance/alerts/thresholds",
    "/no/such/endpoint",
]
PROTECTED_CHANGES = [
    ("PUT", "/api/v1/config"),
    ("POST", "/api/v1/config/reload-ssl"),
    ("POST", "/api/v1/backends/add"),
    ("PUT", "/api/v1/backends/update"),
    ("DELETE", "/api/v1/backends/remove?upstream=default&backend_id=b0"),
    ("POST", "/api/v1/backends/disconnect?upstream=default&backend_id=b0"),
    ("POST", "/api/v1/report"),
    ("POST", "/cache/clear?confirm=yes"),
    ("POST", "/api/v1/cache/purge"),
    ("POST", "/api/v1/cache/warmup"),
    ("PUT", "/api/v1/performance/alerts/thresholds"),
]


def _audit_lines(proxy: ProxyProcess, since: int = 0):
    return [line for line in proxy.log_text()[since:].splitlines() if "[speedproxy.audit#" in line]


@pytest.fixture(scope="module")
def keyed(module_stack):
    origin = module_stack.backend(name="origin")
    extra = module_stack.backend(name="extra")
    proxy = module_stack.proxy(origin, workers=2, config={"admin": {"api_key": KEY}})
    return proxy, AdminClient.of(proxy, KEY), extra


@pytest.mark.parametrize("path", PROTECTED_GETS)
def test_protected_reads_need_the_key(keyed, path) -> None:
    proxy, admin, _ = keyed
    mark = proxy.log_mark()
    missing = admin.get(path, key=None)
    assert missing.status == 401, missing
    assert missing.json["error"] == "unauthorized"
    assert missing.json["reason"] == "missing_key"
    wrong = admin.get(path, key="nope")
    assert (wrong.status, wrong.json["reason"]) == (401, "wrong_key")
    lines = wait_until(lambda: len(_audit_lines(proxy, mark)) >= 2 and _audit_lines(proxy, mark), 5.0, "audit lines")
    assert "outcome=denied" in lines[0] and "reason=missing_key" in lines[0]
    assert "reason=wrong_key" in lines[1]
    assert re.search(r"time=\S+Z peer=127\.0\.0\.1 method=GET path=\S+ outcome=denied status=401", lines[0])
    allowed = admin.get(path)
    assert allowed.status == (404 if path.startswith("/no/") else 200), allowed


@pytest.mark.parametrize("path", OPEN)
def test_open_endpoints_answer_without_a_key(keyed, path) -> None:
    proxy, admin, _ = keyed
    assert admin.get(path, key=None).status == 200
    assert admin.get(path, key="wrong").status == 200


@pytest.mark.parametrize("method, path", PROTECTED_CHANGES)
def test_changes_without_the_key_are_refused_and_audited(keyed, method, path) -> None:
    proxy, admin, _ = keyed
    version = admin.get("/api/v1/config").json["config_version"]
    mark = proxy.log_mark()
    answer = admin.call(method, path, {"upstream": "default"}, key=None)
    assert answer.status == 401, answer
    line = wait_until(lambda: _audit_lines(proxy, mark), 5.0, "an audit line")[0]
    assert f"method={method} path={path.split('?')[0]}" in line
    assert "outcome=denied status=401" in line
    assert admin.get("/api/v1/config").json["config_version"] == version


def test_allowed_changes_are_audited_and_the_key_never_logged(keyed) -> None:
    proxy, admin, extra = keyed
    mark = proxy.log_mark()
    added = admin.post("/api/v1/backends/add", {"upstream": "default", "backend": backend_entry(extra, id="extra")})
    assert added.status == 200, added
    refused = admin.post("/api/v1/backends/add", {"upstream": "default", "backend": {"id": "bad"}})
    assert refused.status == 400
    removed = admin.delete("/api/v1/backends/remove?upstream=default&backend_id=extra")
    assert removed.status == 200
    lines = wait_until(lambda: len(_audit_lines(proxy, mark)) >= 3 and _audit_lines(proxy, mark), 5.0, "audit lines")
    assert "method=POST path=/api/v1/backends/add outcome=allowed status=200" in lines[0]
    assert "outcome=failed status=400" in lines[1]
    assert "method=DELETE path=/api/v1/backends/remove?upstream=default&backend_id=extra outcome=allowed" in lines[2]
    # Reads with the key are not audited.
    admin.get("/api/v1/backends")
    assert len(_audit_lines(proxy, mark)) == 3
    assert KEY not in proxy.log_text()


def test_config_masks_the_key_and_a_masked_put_keeps_it(keyed) -> None:
    proxy, admin, _ = keyed
    current = admin.get("/api/v1/config").json
    assert current["config"]["admin"]["api_key"] == "********"
    assert KEY not in admin.get("/api/v1/config").raw.decode()
    answer = admin.put("/api/v1/config", current["config"])
    assert answer.status == 200, answer
    assert admin.get("/api/v1/config").status == 200  # the same key still works
    assert admin.get("/api/v1/config", key=None).status == 401
    # Without admin.api_key in the body the key is kept too.
    config = dict(current["config"])
    config["admin"] = {"listen": config["admin"]["listen"]}
    assert admin.put("/api/v1/config", config).status == 200
    assert admin.get("/api/v1/backends", key=None).status == 401
    assert admin.get("/status").json["api_key_required"] is True


def test_key_from_a_file_and_rotation(stack, tmp_path) -> None:
    origin = stack.backend(name="origin")
    key_file = tmp_path / "admin.key"
    key_file.write_text("file-key-1\n")
    proxy = stack.proxy(origin, workers=2, config={"admin": {"api_key_file": str(key_file)}})
    admin = AdminClient.of(proxy, "file-key-1")
    assert admin.get("/api/v1/backends").status == 200
    assert admin.get("/api/v1/backends", key=None).status == 401
    key_file.write_text("file-key-2\n")
    os.utime(key_file, (1, 1))  # a different mtime, whatever the clock's resolution
    assert admin.get("/api/v1/backends").status == 401
    assert admin.get("/api/v1/backends", key="file-key-2").status == 200


def test_key_from_the_environment(tmp_path) -> None:
    proxy = ProxyProcess({"server": {"workers": 2}}, directory=tmp_path / "p", env={"SPEEDPROXY_API_KEY": "env-key"})
    try:
        proxy.start()
        admin = AdminClient.of(proxy, "env-key")
        assert admin.get("/api/v1/config").status == 200
        assert admin.get("/api/v1/config", key="x").status == 401
        assert admin.get("/health", key=None).status in (200, 503)
    finally:
        proxy.stop()


@pytest.mark.parametrize("workers", [2, 0])
def test_refuses_to_start_on_a_network_address_without_a_key(tmp_path, workers) -> None:
    config = {"server": {"workers": workers}, "admin": {"listen": f"0.0.0.0:{free_port()}"}}
    proxy = ProxyProcess(config, directory=tmp_path / "p", ready_timeout=10.0)
    with pytest.raises(ProxyStartError):
        proxy.start()
    proxy.stop()
    assert proxy.returncode == 1
    text = proxy.log_text()
    assert "refusing to start" in text and "not a loopback address" in text


def test_a_put_that_would_open_a_network_listener_is_refused(stack) -> None:
    origin = stack.backend(name="origin")
    proxy = stack.proxy(origin, config={"admin": {"api_key": KEY}})
    admin = AdminClient.of(proxy, KEY)
    config = admin.get("/api/v1/config").json["config"]
    config["admin"] = {"listen": "0.0.0.0:9901", "api_key": ""}
    answer = admin.put("/api/v1/config", config)
    assert (answer.status, answer.json["field"]) == (400, "admin.api_key")


def test_single_process_mode_offers_the_same_api(stack) -> None:
    origin = stack.backend(name="origin")
    other = stack.backend(name="other")
    other.route("/slow", delayed(0.3))
    proxy = stack.proxy(origin, workers=0, slow_request_threshold="100ms", config={"admin": {"api_key": KEY}})
    admin = AdminClient.of(proxy, KEY)
    assert admin.get("/api/v1/config", key=None).status == 401
    status = admin.get("/status").json
    assert status["mode"] == "single-process"
    assert admin.get("/health").status == 200
    answer = admin.post("/api/v1/backends/add", {"upstream": "default", "backend": backend_entry(other, id="other")})
    assert answer.status == 200, answer
    assert answer.json["config_version"] == 2
    assert admin.delete("/api/v1/backends/remove?upstream=default&backend_id=b0").status == 200
    status, _, body = proxy_get(proxy, "/slow")
    assert status == 200 and b'"backend": "other"' in body
    slow = admin.get("/api/v1/performance/slow-requests").json
    assert slow["requests"][0]["path"] == "/slow"
    assert admin.post("/api/v1/report", {"backend_id": "other", "cpu_usage": 40}).json["reported_load"] == 0.4
    assert admin.get("/api/v1/backends").json["upstreams"]["default"][0]["runtime"]["reported_load"] == 0.4
    assert admin.post("/api/v1/backends/disconnect?upstream=default&backend_id=other").status == 200
    usage = admin.get("/api/v1/performance/resource-usage").json
    assert [row["role"] for row in usage["processes"]] == ["single-process"]
    bad = admin.put("/api/v1/config", {"server": {"port": "x"}})
    assert (bad.status, bad.json["field"]) == (400, "server.port")
