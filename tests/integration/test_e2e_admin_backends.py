"""Admin API, backends: add, update, remove, disconnect against 2 live workers.

Covers the "done when" lines of the control API: a backend added under load
gets traffic from both workers within 1 s of the 200; a removed one gets no
new request while its slow in-flight request completes; disconnect cuts it
off; wrong bodies change nothing; concurrent changes never lose one.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List

import pytest

from speedproxy.testing import backend_entry, delayed, stall, wait_until

from admin_support import AdminClient, Load, proxy_get


def no_passive(*backends: Any) -> Dict[str, Any]:
    """Backends with passive health checks off: cut connections must not take one out."""
    entries = [backend_entry(b, id=f"b{i}", health_check={"passive_failures": 0}) for i, b in enumerate(backends)]
    return {"backends": {"default": entries}}


def _two_worker_proxy(stack: Any, *backends: Any, **server: Any) -> Any:
    server.setdefault("workers", 2)
    return stack.proxy(*backends, **server)


def _version(admin: AdminClient) -> int:
    answer = admin.get("/api/v1/config")
    assert answer.status == 200, answer
    return answer.json["config_version"]


def _ids(admin: AdminClient, upstream: str = "default") -> List[str]:
    answer = admin.get(f"/api/v1/backends?upstream={upstream}")
    assert answer.status == 200, answer
    return [row["id"] for row in answer.json["backends"]]


def test_add_under_load_reaches_both_workers_within_a_second(stack) -> None:
    old = stack.backend(name="old")
    new = stack.backend(name="new")
    proxy = _two_worker_proxy(stack, old)
    admin = AdminClient.of(proxy)
    with Load(proxy, threads=8) as load:
        # Premise: both workers take traffic.
        load.wait_for(lambda: len({hit.worker for hit in load.hits if hit.status == 200}) >= 2, 5.0, "both workers serving")
        answer = admin.post(
            "/api/v1/backends/add", {"upstream": "default", "backend": backend_entry(new, id="b-new")}
        )
        acknowledged = time.monotonic()
        assert answer.status == 200, answer
        assert answer.json["config_version"] == 2
        assert answer.json["backend"]["id"] == "b-new"
        assert answer.json["workers"] == 2

        def new_from_both() -> bool:
            workers = {hit.worker for hit in load.since(acknowledged) if hit.backend == "new"}
            return len(workers) >= 2

        load.wait_for(new_from_both, 1.0, "the new backend to get traffic from both workers")
        assert time.monotonic() - acknowledged <= 1.5
    assert not [hit for hit in load.hits if hit.status != 200], load.hits[-5:]
    assert _ids(admin) == ["b0", "b-new"]


def test_remove_stops_new_traffic_while_in_flight_request_completes(stack) -> None:
    first = stack.backend(name="first")
    second = stack.backend(name="second")
    for origin in (first, second):
        origin.route("/slow", delayed(1.5))
    proxy = _two_worker_proxy(stack, first, second)
    admin = AdminClient.of(proxy)
    result: Dict[str, Any] = {}

    def slow_call() -> None:
        result["answer"] = proxy_get(proxy, "/slow", timeout=10.0)

    thread = threading.Thread(target=slow_call)
    thread.start()
    target = wait_until(
        lambda: next((b for b in (first, second) if ("GET", "/slow") in b.heads), None), 5.0, "the slow request"
    )
    other = second if target is first else first
    target_id = "b0" if target is first else "b1"
    answer = admin.delete(f"/api/v1/backends/remove?upstream=default&backend_id={target_id}")
    assert answer.status == 200, answer
    assert answer.json["removed"]["id"] == target_id
    assert answer.json["config_version"] == 2
    before = len(target.requests)
    for index in range(20):
        status, _, body = proxy_get(proxy, f"/after/{index}")
        assert status == 200
    assert len(target.requests) == before, "the removed backend got a new request"
    assert len([r for r in other.requests if r.path.startswith("/after/")]) == 20
    thread.join(10.0)
    status, _, body = result["answer"]
    assert status == 200, body
    assert b'"backend": "%s"' % target.name.encode() in body
    assert _ids(admin) == ["b1" if target_id == "b0" else "b0"]


def test_disconnect_cuts_in_flight_requests_at_once(stack) -> None:
    origin = stack.backend(name="origin")
    origin.route("/hold", stall())
    proxy = _two_worker_proxy(stack, origin, config=no_passive(origin))
    admin = AdminClient.of(proxy)
    results: List[Any] = []

    def held() -> None:
        started = time.monotonic()
        status, _, body = proxy_get(proxy, "/hold", timeout=10.0)
        results.append((status, time.monotonic() - started, body))

    threads = [threading.Thread(target=held) for _ in range(3)]
    for thread in threads:
        thread.start()
    origin.wait_for(lambda b: b.stalled >= 3, 5.0, "three held requests")
    active = admin.get("/api/v1/performance/active-requests")
    assert active.status == 200
    assert active.json["count"] >= 3
    assert {row["path"] for row in active.json["requests"]} == {"/hold"}
    answer = admin.post("/api/v1/backends/disconnect?upstream=default&backend_id=b0")
    assert answer.status == 200, answer
    assert answer.json["closed"] >= 3
    assert answer.json["workers"] == 2
    for thread in threads:
        thread.join(5.0)
    assert len(results) == 3
    for status, seconds, body in results:
        assert status == 502, body
        assert seconds < 4.0
    # Pooled connections are gone too, and the backend still serves new requests.
    assert proxy_get(proxy, "/again")[0] == 200


def test_remove_then_disconnect_cuts_the_removed_backends_request(stack) -> None:
    drop = stack.backend(name="drop")
    drop.route("/hold", stall())
    keep = stack.backend(name="keep")
    proxy = _two_worker_proxy(stack, drop, config=no_passive(drop))
    admin = AdminClient.of(proxy)
    results: List[Any] = []
    thread = threading.Thread(target=lambda: results.append(proxy_get(proxy, "/hold", timeout=10.0)))
    thread.start()
    drop.wait_for(lambda b: b.stalled >= 1, 5.0, "a held request")
    added = admin.post("/api/v1/backends/add", {"upstream": "default", "id": "keep", "host": keep.host, "port": keep.port})
    assert added.status == 200, added
    assert admin.delete("/api/v1/backends/remove?upstream=default&backend_id=b0").status == 200
    # Removed: the held request is still in flight (it would finish normally).
    time.sleep(0.2)
    assert not results
    answer = admin.post("/api/v1/backends/disconnect?upstream=default&backend_id=b0")
    assert answer.status == 200, answer
    assert answer.json["closed"] >= 1
    thread.join(5.0)
    assert results, "the held request was not cut"
    status, _, body = results[0]
    # Cut before any response byte, the idempotent GET is retried on the other backend.
    assert status == 200, body
    assert b'"backend": "keep"' in body


def test_update_weight_active_and_health_check(stack) -> None:
    first = stack.backend(name="first")
    second = stack.backend(name="second")
    proxy = _two_worker_proxy(stack, first, second)
    admin = AdminClient.of(proxy)
    answer = admin.put("/api/v1/backends/update", {"upstream": "default", "backend_id": "b0", "active": False})
    assert answer.status == 200, answer
    assert answer.json["backend"]["active"] is False
    version = answer.json["config_version"]
    for _ in range(10):
        assert b'"backend": "second"' in proxy_get(proxy, "/x")[2]
    answer = admin.put(
        "/api/v1/backends/update",
        {"upstream": "default", "backend_id": "b0", "active": True, "weight": 0, "max_conn": 5,
         "health_check": {"path": "/ping", "interval": "2s"}},
    )
    assert answer.status == 200, answer
    assert answer.json["config_version"] == version + 1
    backend = answer.json["backend"]
    assert (backend["weight"], backend["max_conn"], backend["health_check"]["path"]) == (0, 5, "/ping")
    assert backend["health_check"]["interval"] == "2s"
    answer = admin.put("/api/v1/backends/update", {"upstream": "default", "backend_id": "b0", "health_check": {"timeout": "1s"}})
    assert answer.status == 200
    assert answer.json["backend"]["health_check"]["path"] == "/ping"  # merged, not replaced
    assert answer.json["backend"]["health_check"]["timeout"] == "1s"
    for _ in range(10):
        assert b'"backend": "second"' in proxy_get(proxy, "/y")[2]
    listing = admin.get("/api/v1/backends").json["upstreams"]["default"]
    assert [row["weight"] for row in listing] == [0, 100]


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"upstream": "default", "backend_id": "b0", "weight": "heavy"}, 400, "weight"),
        ({"upstream": "default", "backend_id": "b0", "weight": -1}, 400, "weight"),
        ({"upstream": "default", "backend_id": "b0", "host": "10.0.0.1"}, 400, "host"),
        ({"upstream": "default", "backend_id": "b0", "active": "yes"}, 400, "active"),
        ({"upstream": "default", "backend_id": "b0", "health_check": {"interval": "soon"}}, 400, "health_check.interval"),
        ({"upstream": "default", "backend_id": "b0"}, 400, None),
        ({"upstream": "default", "weight": 5}, 400, "backend_id"),
        ({"upstream": "nope", "backend_id": "b0", "weight": 5}, 404, "upstream"),
        ({"upstream": "default", "backend_id": "zz", "weight": 5}, 404, "backend_id"),
    ],
)
def test_update_refuses_bad_bodies(module_admin_proxy, body, status, field) -> None:
    proxy, admin = module_admin_proxy
    version = _version(admin)
    answer = admin.put("/api/v1/backends/update", body)
    assert answer.status == status, answer
    assert answer.json.get("field") == field
    assert _version(admin) == version


@pytest.mark.parametrize(
    "raw, status, field",
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b"", 400, "upstream"),
        (b'{"backend": {"id": "x", "host": "127.0.0.1", "port": 1}}', 400, "upstream"),
        (b'{"upstream": 7, "backend": {"id": "x", "host": "127.0.0.1", "port": 1}}', 400, "upstream"),
        (b'{"upstream": "nope", "backend": {"id": "x", "host": "127.0.0.1", "port": 1}}', 404, "upstream"),
        (b'{"upstream": "default", "backend": {"id": "x", "host": "127.0.0.1", "port": "http"}}', 400, "port"),
        (b'{"upstream": "default", "backend": {"id": "x", "host": "127.0.0.1", "port": 70000}}', 400, "port"),
        (b'{"upstream": "default", "backend": {"host": "127.0.0.1", "port": 1}}', 400, "id"),
        (b'{"upstream": "default", "backend": {"id": "x", "host": "127.0.0.1", "port": 1, "colour": "red"}}', 400, "colour"),
        (b'{"upstream": "default", "backend": "b9"}', 400, "backend"),
        (b'{"upstream": "default", "backend": {"id": "b0", "host": "127.0.0.1", "port": 1}}', 409, "id"),
        (b'{"upstream": "default", "id": "flat", "host": "127.0.0.1", "port": "x"}', 400, "port"),
    ],
)
def test_add_refuses_bad_bodies(module_admin_proxy, raw, status, field) -> None:
    proxy, admin = module_admin_proxy
    version = _version(admin)
    answer = admin.call("POST", "/api/v1/backends/add", raw=raw, headers={"Content-Type": "application/json"})
    assert answer.status == status, answer
    body = answer.json
    assert body["error"] in ("bad_request", "invalid_config", "not_found", "conflict")
    assert body.get("field") == field
    assert _version(admin) == version
    assert _ids(admin) == ["b0"]


def test_remove_and_disconnect_refuse_unknown_or_missing(module_admin_proxy) -> None:
    proxy, admin = module_admin_proxy
    version = _version(admin)
    assert admin.delete("/api/v1/backends/remove?upstream=default&backend_id=zz").status == 404
    assert admin.delete("/api/v1/backends/remove?upstream=nope&backend_id=b0").status == 404
    missing = admin.delete("/api/v1/backends/remove?upstream=default")
    assert (missing.status, missing.json["field"]) == (400, "backend_id")
    assert admin.post("/api/v1/backends/disconnect?upstream=default&backend_id=zz").status == 404
    assert admin.get("/api/v1/backends?upstream=nope").status == 404
    assert _version(admin) == version


def test_concurrent_adds_are_all_applied_or_cleanly_refused(stack) -> None:
    origin = stack.backend(name="origin")
    proxy = _two_worker_proxy(stack, origin)
    admin = AdminClient.of(proxy)
    answers: List[Any] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def add(backend_id: str) -> None:
        start.wait(5.0)
        answer = admin.post(
            "/api/v1/backends/add",
            {"upstream": "default", "backend": backend_entry(origin, id=backend_id)},
        )
        with lock:
            answers.append((backend_id, answer))

    ids = [f"c{i}" for i in range(10)] + ["dup", "dup"]
    threads = [threading.Thread(target=add, args=(backend_id,)) for backend_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20.0)
    assert len(answers) == 12
    ok = [(backend_id, a.json["config_version"]) for backend_id, a in answers if a.status == 200]
    refused = [(backend_id, a) for backend_id, a in answers if a.status != 200]
    assert [a.status for _, a in refused] == [409]
    assert refused[0][0] == "dup"
    versions = sorted(version for _, version in ok)
    assert versions == list(range(2, 2 + 11)), versions  # strictly increasing, none lost
    assert sorted(_ids(admin)) == sorted(["b0", "dup"] + [f"c{i}" for i in range(10)])
    assert _version(admin) == 12
    # Every worker runs the last version.
    workers = admin.get("/status").json["workers"]
    assert [w["config_version"] for w in workers] == [12, 12]
    # And traffic flows to the added backends.
    for _ in range(5):
        assert proxy_get(proxy, "/after")[0] == 200


@pytest.fixture(scope="module")
def module_admin_proxy(module_stack):
    origin = module_stack.backend(name="origin")
    proxy = module_stack.proxy(origin, workers=2)
    return proxy, AdminClient.of(proxy)
