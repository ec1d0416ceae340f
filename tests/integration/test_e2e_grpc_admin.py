"""The gRPC management service against a real 2-worker ``twistd speedproxy``.

A real grpcio client: the stubs shipped in the package for typed calls,
server reflection (as grpcurl uses it; grpcurl itself is not packaged by
Debian 12) to list and call every RPC from JSON, the standard health
service, and the JSON admin API side by side to check that both give the
same answers, the same refusals and the same audit lines.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from grpc_support import (  # skips on PyPy
    KEY, SERVICE, AdminGrpc, Reflected, as_dict, health_status, serving, start_grpc_proxy, struct,
)

import grpc
from speedproxy.admin.grpc import admin_pb2
from speedproxy.testing import check_config, free_port, twistd_command, wait_until

from admin_support import AdminClient, proxy_get

#: Every RPC of speedproxy.admin.v1.Admin.
RPCS = [
    "AddBackend", "DisconnectBackend", "GetBackendStats", "GetConfig", "GetServerStats", "ListBackends",
    "ReloadSSL", "RemoveBackend", "ReplaceConfig", "Report", "UpdateBackend", "WatchStats",
]


@pytest.fixture
def served(stack: Any) -> Any:
    """Two backends (b0 serving, b1 too), a 2-worker proxy with gRPC, both clients."""
    first = stack.backend(name="first")
    second = stack.backend(name="second")
    proxy, port = start_grpc_proxy(stack, first, second)
    client = AdminGrpc(port)
    wait_until(lambda: serving(port), 10.0, "the gRPC health service to say SERVING")
    yield proxy, port, client, AdminClient.of(proxy, key=KEY), (first, second)
    client.close()


def worker_versions(admin: AdminClient) -> List[int]:
    return [worker["config_version"] for worker in admin.get("/status").json["workers"]]


def test_reflection_lists_and_calls_every_rpc(served: Any) -> None:
    proxy, port, _, admin, (first, second) = served
    reflected = Reflected(port)
    try:
        assert reflected.services() == [
            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", SERVICE,
        ]
        assert sorted(reflected.methods(SERVICE)) == RPCS
        key = [("x-api-key", KEY)]
        spare = free_port()
        # Every RPC, from JSON bodies resolved through reflection (grpcurl -d '{...}').
        bodies: Dict[str, Dict[str, Any]] = {
            "GetConfig": {},
            "ListBackends": {"upstream": "default"},
            "AddBackend": {"upstream": "default", "backend": {"id": "b9", "host": "127.0.0.1", "port": spare}},
            "UpdateBackend": {"upstream": "default", "backend": {"id": "b9", "weight": 7}},
            "GetServerStats": {},
            "GetBackendStats": {"upstream": "default", "backend_id": "b9"},
            "Report": {"upstream": "default", "backend_id": "b0", "performance": {"cpuUsage": 50}},
            "DisconnectBackend": {"upstream": "default", "backendId": "b0"},
            "RemoveBackend": {"upstream": "default", "backend_id": "b9"},
            "WatchStats": {"intervalSeconds": 0.1, "count": 2},
        }
        answers = {name: reflected.call(SERVICE, name, body, key) for name, body in bodies.items()}
        assert answers["GetConfig"][0]["config"]["grpc"]["port"] == port
        assert [row["id"] for row in answers["ListBackends"][0]["backends"]] == ["b0", "b1"]
        assert answers["AddBackend"][0]["backend"]["port"] == spare
        assert answers["UpdateBackend"][0]["backend"]["weight"] == 7
        assert answers["GetBackendStats"][0]["backend"]["weight"] == 7
        assert answers["Report"][0]["reported_load"] == 0.5
        assert answers["DisconnectBackend"][0]["workers"] == 2
        assert answers["RemoveBackend"][0]["removed"]["id"] == "b9"
        assert [update["sequence"] for update in answers["WatchStats"]] == ["1", "2"]
        live = reflected.call(SERVICE, "GetConfig", {}, key)[0]["config"]
        answers["ReplaceConfig"] = reflected.call(SERVICE, "ReplaceConfig", {"config": live}, key)
        assert answers["ReplaceConfig"][0]["config_version"] == 5  # add, update, remove, then this
        with pytest.raises(grpc.RpcError) as refused:
            reflected.call(SERVICE, "ReloadSSL", {}, key)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # ssl.enabled is false
        assert sorted(list(answers) + ["ReloadSSL"]) == RPCS
    finally:
        reflected.close()
    assert health_status(port) == "SERVING"
    assert health_status(port, SERVICE) == "SERVING"


def test_answers_are_the_json_apis(served: Any) -> None:
    proxy, port, client, admin, _ = served
    assert proxy_get(proxy, "/x")[0] == 200
    pairs = [
        ("GetConfig", None, "/api/v1/config"),
        ("ListBackends", admin_pb2.ListBackendsRequest(upstream="default"), "/api/v1/backends?upstream=default"),
    ]
    for name, request, path in pairs:
        by_grpc = client.call(name, request)
        by_json = admin.get(path).json
        assert _numbers_as_floats(by_json) == by_grpc, name
    stats = client.call("GetServerStats")
    assert stats["totals"]["requests"] >= 1 and len(stats["workers"]) == 2


def _numbers_as_floats(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_floats(v) for v in value]
    return value


def test_changes_reach_every_worker_before_the_answer(served: Any) -> None:
    proxy, port, client, admin, (first, second) = served
    spare = free_port()
    request = admin_pb2.AddBackendRequest(upstream="default", backend=struct({"id": "b2", "host": "127.0.0.1", "port": spare, "name": "Spare"}))
    answer = client.call("AddBackend", request)
    assert answer["workers"] == 2.0
    assert worker_versions(admin) == [int(answer["config_version"])] * 2
    rows = admin.get("/api/v1/backends?upstream=default").json["backends"]
    assert [(row["id"], row.get("name")) for row in rows] == [("b0", None), ("b1", None), ("b2", "Spare")]
    assert rows[2]["runtime"]["workers"] == 2

    # SpeedMimi's nested update form, and the id given beside it.
    nested = admin_pb2.UpdateBackendRequest(upstream="default", backend=struct({"id": "b2", "weight": 200}))
    answer = client.call("UpdateBackend", nested)
    assert answer["backend"]["weight"] == 200.0
    assert worker_versions(admin) == [int(answer["config_version"])] * 2
    beside = admin_pb2.UpdateBackendRequest(upstream="default", backend_id="b2", backend=struct({"active": False}))
    assert client.call("UpdateBackend", beside)["backend"]["active"] is False

    # A weight of 0 for b0: traffic goes to b1 only (the change is live).
    client.call("UpdateBackend", admin_pb2.UpdateBackendRequest(upstream="default", backend_id="b0", backend=struct({"weight": 0})))
    before = len(first.requests)
    for _ in range(6):
        assert proxy_get(proxy, "/after")[0] == 200
    assert len(first.requests) == before

    answer = client.call("RemoveBackend", admin_pb2.RemoveBackendRequest(upstream="default", backend_id="b2"))
    assert answer["removed"]["id"] == "b2"
    assert worker_versions(admin) == [int(answer["config_version"])] * 2
    answer = client.call("DisconnectBackend", admin_pb2.DisconnectBackendRequest(upstream="default", backend_id="b2"))
    assert answer["workers"] == 2.0  # a backend removed through the API can still be disconnected


def test_replace_config_and_its_version_check(served: Any) -> None:
    proxy, port, client, admin, _ = served
    live = client.call("GetConfig")
    config = live["config"]
    config["server"]["slow_request_threshold"] = "3s"
    request = admin_pb2.ReplaceConfigRequest(config=struct(config), config_version=int(live["config_version"]))
    answer = client.call("ReplaceConfig", request)
    assert answer["config_version"] == live["config_version"] + 1
    assert admin.get("/api/v1/config").json["config"]["server"]["slow_request_threshold"] == "3s"
    assert worker_versions(admin) == [int(answer["config_version"])] * 2
    # The same read-modify-write again: the version is stale now.
    code, message, body = client.refused("ReplaceConfig", request)
    assert code == grpc.StatusCode.ABORTED
    assert body["error"] == "conflict" and body["field"] == "config_version"
    # A wrong config: INVALID_ARGUMENT naming the field, nothing applied.
    config["server"]["port"] = 0
    code, message, body = client.refused("ReplaceConfig", admin_pb2.ReplaceConfigRequest(config=struct(config)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert body["field"] == "server.port" and "server.port" in message
    assert client.call("GetConfig")["config_version"] == answer["config_version"]


def test_refusals_map_to_grpc_status_codes(served: Any) -> None:
    proxy, port, client, admin, _ = served
    code, _, body = client.refused("GetBackendStats", admin_pb2.GetBackendStatsRequest(upstream="default", backend_id="zz"))
    assert (code, body["field"]) == (grpc.StatusCode.NOT_FOUND, "backend_id")
    duplicate = admin_pb2.AddBackendRequest(upstream="default", backend=struct({"id": "b0", "host": "127.0.0.1", "port": 1}))
    code, _, body = client.refused("AddBackend", duplicate)
    assert (code, body["field"]) == (grpc.StatusCode.ALREADY_EXISTS, "id")
    bad = admin_pb2.UpdateBackendRequest(upstream="default", backend=struct({"id": "b0", "weight": -1}))
    code, _, body = client.refused("UpdateBackend", bad)
    assert (code, body["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "weight")
    report = admin_pb2.ReportRequest(backend_id="b0", performance=admin_pb2.Performance(cpu_usage=150))
    code, _, body = client.refused("Report", report)
    assert (code, body["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, "cpu_usage")
    code, message, _ = client.refused("ReloadSSL", admin_pb2.ReloadSSLRequest())
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "ssl.enabled" in message
    assert client.call("GetConfig")["config_version"] == 1.0


def test_report_reaches_the_balancers(served: Any) -> None:
    proxy, port, client, admin, _ = served
    request = admin_pb2.ReportRequest(
        upstream="default", backend_id="b1",
        performance=admin_pb2.Performance(cpu_usage=45.2, memory_usage=67.8, load_avg_1=2.1),
    )
    answer = client.call("Report", request)
    assert answer["reported_load"] == pytest.approx((0.452 * 2 + 0.678) / 3, abs=1e-3)
    row = client.call("GetBackendStats", admin_pb2.GetBackendStatsRequest(upstream="default", backend_id="b1"))["backend"]
    assert row["runtime"]["reported_load"] == answer["reported_load"]
    assert row["runtime"]["workers"] == 2.0


def test_the_api_key_and_the_audit_log(served: Any) -> None:
    proxy, port, client, admin, _ = served
    mark = proxy.log_mark()
    code, message, body = client.refused("GetConfig", admin_pb2.GetConfigRequest(), key=None)
    assert code == grpc.StatusCode.UNAUTHENTICATED and body["reason"] == "missing_key"
    code, _, body = client.refused("ListBackends", admin_pb2.ListBackendsRequest(), key="wrong")
    assert code == grpc.StatusCode.UNAUTHENTICATED and body["reason"] == "wrong_key"
    with pytest.raises(grpc.RpcError) as refused:
        next(iter(client.stub.WatchStats(admin_pb2.WatchStatsRequest(count=1), timeout=5)))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    client.call("UpdateBackend", admin_pb2.UpdateBackendRequest(upstream="default", backend_id="b1", backend=struct({"weight": 5})))
    client.refused("RemoveBackend", admin_pb2.RemoveBackendRequest(upstream="default", backend_id="nope"))
    client.call("GetServerStats")  # reads are not audited
    path = f"/{SERVICE}/"
    proxy.wait_for_log(path + "RemoveBackend", 5.0, since=mark)
    lines = [line.split("audit ", 1)[1] for line in proxy.log_text()[mark:].splitlines() if "audit time=" in line]
    lines = [re.sub(r"time=\S+ ", "", line) for line in lines]
    assert lines == [
        f"peer=127.0.0.1 method=GRPC path={path}GetConfig outcome=denied status=401 grpc_status=UNAUTHENTICATED reason=missing_key",
        f"peer=127.0.0.1 method=GRPC path={path}ListBackends outcome=denied status=401 grpc_status=UNAUTHENTICATED reason=wrong_key",
        f"peer=127.0.0.1 method=GRPC path={path}WatchStats outcome=denied status=401 grpc_status=UNAUTHENTICATED reason=missing_key",
        f"peer=127.0.0.1 method=GRPC path={path}UpdateBackend outcome=allowed status=200 grpc_status=OK",
        f"peer=127.0.0.1 method=GRPC path={path}RemoveBackend outcome=failed status=404 grpc_status=NOT_FOUND",
    ]
    # The JSON API's line for the same refusal has the same shape.
    mark = proxy.log_mark()
    assert admin.get("/api/v1/config", key=None).status == 401
    line = proxy.wait_for_log("audit time=", 5.0, since=mark)
    assert re.search(r"peer=127\.0\.0\.1 method=GET path=/api/v1/config outcome=denied status=401 reason=missing_key$", line)


def test_watch_stats_pushes_every_interval(served: Any) -> None:
    proxy, port, client, admin, _ = served
    request = admin_pb2.WatchStatsRequest(interval_seconds=0.3, count=4, backends=True)
    seen = []
    for update in client.stub.WatchStats(request, metadata=client.metadata(), timeout=15):
        seen.append(update)
        if len(seen) < 4:
            assert proxy_get(proxy, "/between")[0] == 200  # counted in the next update
    assert [update.sequence for update in seen] == [1, 2, 3, 4]
    gaps = [later.time - earlier.time for earlier, later in zip(seen, seen[1:])]
    assert all(0.25 <= gap <= 3.0 for gap in gaps), gaps
    totals = [as_dict(update.server)["totals"]["requests"] for update in seen]
    assert totals == sorted(totals) and totals[-1] >= totals[0] + 3, totals
    backends = as_dict(seen[-1].backends)["backends"]
    assert sorted(row["id"] for row in backends) == ["b0", "b1"]
    code = None
    try:
        next(iter(client.stub.WatchStats(admin_pb2.WatchStatsRequest(interval_seconds=0.01), metadata=client.metadata(), timeout=5)))
    except grpc.RpcError as error:
        code = error.code()
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_sigterm_ends_watchers_and_exits_cleanly(stack: Any) -> None:
    backend = stack.backend()
    proxy, port = start_grpc_proxy(stack, backend)
    wait_until(lambda: serving(port), 10.0, "the gRPC health service to say SERVING")
    client = AdminGrpc(port)
    stream = client.stub.WatchStats(admin_pb2.WatchStatsRequest(interval_seconds=60), metadata=client.metadata(), timeout=60)
    first = next(iter(stream))
    assert first.sequence == 1
    ended: Dict[str, Any] = {}

    def drain() -> None:
        try:
            for _ in stream:
                pass
            ended["code"] = grpc.StatusCode.OK
        except grpc.RpcError as error:
            ended["code"] = error.code()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    started = time.monotonic()
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(timeout=15.0) == 0, proxy.log_tail()
    assert time.monotonic() - started < 10.0
    reader.join(5.0)
    assert ended.get("code") == grpc.StatusCode.UNAVAILABLE, ended
    assert "gRPC management service stopped" in proxy.log_text()
    client.close()


def test_a_worker_restart_keeps_the_service(served: Any) -> None:
    proxy, port, client, admin, _ = served
    pid = admin.get("/status").json["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: [w["pid"] for w in admin.get("/status").json["workers"] if w["ready"]] and pid not in
        [w["pid"] for w in admin.get("/status").json["workers"]] and admin.get("/status").json["workers_ready"] == 2,
        15.0, "the worker to be replaced",
    )
    answer = client.call("UpdateBackend", admin_pb2.UpdateBackendRequest(upstream="default", backend_id="b0", backend=struct({"weight": 9})))
    assert answer["workers"] == 2.0
    assert health_status(port) == "SERVING"


def test_a_taken_grpc_port_stops_start_up(stack: Any, tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        from speedproxy.testing import ProxyProcess, ProxyStartError

        process = ProxyProcess({"grpc": {"enabled": True, "host": "127.0.0.1", "port": taken.getsockname()[1]}}, directory=tmp_path / "p")
        stack.proxies.append(process)
        with pytest.raises(ProxyStartError):
            process.start()
        assert process.returncode == 1
        assert re.search(r"cannot listen on 127\.0\.0\.1:\d+ \(grpc\.host/grpc\.port\)", process.log_text()), process.log_text()
    finally:
        taken.close()


def test_check_says_when_grpcio_cannot_be_imported(tmp_path: Path) -> None:
    """As on PyPy, where grpcio has no build: a stand-in ``grpc`` that fails to import."""
    fake = tmp_path / "nogrpc" / "grpc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("no grpcio for this interpreter")\n')
    config = tmp_path / "speedproxy.yaml"
    config.write_text(yaml.safe_dump({"grpc": {"enabled": True, "port": 9999}}))
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "nogrpc"), root])
    argv = twistd_command() + ["-n", "--pidfile=", "-l", "-", "speedproxy", "--config", str(config), "--check"]
    result = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert result.returncode == 1, result.stdout
    assert re.search(
        r"speedproxy\.yaml:2: grpc\.enabled: the gRPC management service needs grpcio, which cannot be imported "
        r"here \(ImportError: no grpcio for this interpreter\): pip install 'speedproxy\[grpc\]'",
        result.stdout,
    ), result.stdout
    # The same file with grpc.enabled false needs no grpcio.
    config.write_text(yaml.safe_dump({"grpc": {"enabled": False, "port": 9999}}))
    result = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert check_config(config).returncode == 0


def test_single_process_mode_serves_it_too(stack: Any) -> None:
    """``server.workers: 0``: the one process serves the proxy, the JSON API and gRPC."""
    backend = stack.backend()
    proxy, port = start_grpc_proxy(stack, backend, workers=0)
    client = AdminGrpc(port)
    try:
        wait_until(lambda: serving(port), 10.0, "the gRPC health service to say SERVING")
        request = admin_pb2.UpdateBackendRequest(upstream="default", backend=struct({"id": "b0", "weight": 3}))
        answer = client.call("UpdateBackend", request)
        assert answer["backend"]["weight"] == 3.0
        assert AdminClient.of(proxy, key=KEY).get("/api/v1/backends?upstream=default").json["backends"][0]["weight"] == 3
        assert client.call("GetServerStats")["mode"] != "master"
    finally:
        client.close()
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(timeout=15.0) == 0, proxy.log_tail()
