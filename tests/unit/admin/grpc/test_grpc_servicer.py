"""Tests for :mod:`speedproxy.admin.grpc.servicer`: a real grpcio server and client in process.

The servicer drives the admin site's fake master through the real facade;
``callFromThread`` runs at once (see :class:`ImmediateReactor`).
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from typing import Any, Dict, Iterator, List, Optional

import pytest
from google.protobuf import json_format
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from grpc_unit_support import CONFIG, FakeControl, ImmediateReactor

import grpc
from speedproxy.admin.context import AdminContext
from speedproxy.admin.facade import AdminFacade
from speedproxy.admin.grpc import admin_pb2, admin_pb2_grpc
from speedproxy.admin.grpc.bridge import ReactorBridge
from speedproxy.admin.grpc.servicer import CALLS, AdminServicer, peer_host
from speedproxy.admin.site import admin_site
from speedproxy.config import parse_config

KEY = "k3y"


class Served:
    def __init__(self, key: Optional[str] = KEY) -> None:
        self.control = FakeControl(parse_config(CONFIG + (f"admin: {{api_key: {key}}}\n" if key else "")))
        self.api = AdminContext(self.control, environ={})
        self.reactor = ImmediateReactor()
        self.bridge = ReactorBridge(self.reactor)
        self.servicer = AdminServicer(AdminFacade(self.api), self.bridge, max_watchers=1)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        admin_pb2_grpc.add_AdminServicer_to_server(self.servicer, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = admin_pb2_grpc.AdminStub(self.channel)

    def call(self, name: str, request: Any = None, key: Optional[str] = KEY, timeout: float = 5.0) -> Dict[str, Any]:
        request = request if request is not None else getattr(admin_pb2, name + "Request")()
        metadata = [("x-api-key", key)] if key else []
        return json_format.MessageToDict(getattr(self.stub, name)(request, metadata=metadata, timeout=timeout))

    def error(self, name: str, request: Any = None, key: Optional[str] = KEY, timeout: float = 5.0) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as raised:
            self.call(name, request, key, timeout)
        return raised.value

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)


@pytest.fixture
def served() -> Iterator[Served]:
    made = Served()
    yield made
    made.close()


@pytest.fixture
def audit() -> Iterator[List[str]]:
    lines: List[str] = []

    def observe(event: Dict[str, Any]) -> None:
        if event.get("log_namespace") == "speedproxy.audit":
            lines.append(event["line"])

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def struct_request(cls: Any, **fields: Any) -> Any:
    request = cls()
    for name, value in fields.items():
        if isinstance(value, dict):
            getattr(request, name).update(value)
        else:
            setattr(request, name, value)
    return request


def test_every_rpc_of_the_proto_is_served() -> None:
    service = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
    assert sorted(method.name for method in service.methods) == sorted(list(CALLS) + ["WatchStats"])


def test_answers_equal_the_json_sites(served: Served) -> None:
    site = admin_site(served.control, environ={})
    from test_admin_site import call as site_call

    pairs = [
        ("GetConfig", None, "/api/v1/config"),
        ("ListBackends", admin_pb2.ListBackendsRequest(upstream="default"), "/api/v1/backends?upstream=default"),
        ("GetBackendStats", admin_pb2.GetBackendStatsRequest(upstream="default", backend_id="a"),
         "/api/v1/stats/backend?upstream=default&backend_id=a"),
    ]
    for name, request, path in pairs:
        by_json = site_call(site, "GET", path, headers={"X-API-Key": KEY}).json
        assert served.call(name, request) == json.loads(json.dumps(by_json), parse_int=float), name


def test_changes_go_through_the_facade(served: Served, audit: List[str]) -> None:
    add = struct_request(admin_pb2.AddBackendRequest, upstream="default",
                         backend={"id": "b", "host": "10.0.0.2", "port": 81, "name": "Bee"})
    assert served.call("AddBackend", add)["config_version"] == 2.0
    assert served.control.config.backends["default"][1].name == "Bee"
    update = struct_request(admin_pb2.UpdateBackendRequest, upstream="default", backend={"id": "b", "weight": 200})
    assert served.call("UpdateBackend", update)["backend"]["weight"] == 200.0
    assert served.control.config.backends["default"][1].weight == 200
    report = admin_pb2.ReportRequest(upstream="default", backend_id="b", performance=admin_pb2.Performance(cpu_usage=50))
    assert served.call("Report", report)["reported_load"] == 0.5
    assert served.control.loads == [("default", "b", 0.5)]
    disconnect = admin_pb2.DisconnectBackendRequest(upstream="default", backend_id="b")
    assert served.call("DisconnectBackend", disconnect)["closed"] == 3.0
    remove = admin_pb2.RemoveBackendRequest(upstream="default", backend_id="b")
    assert served.call("RemoveBackend", remove)["removed"]["id"] == "b"
    assert [b.id for b in served.control.config.backends["default"]] == ["a"]
    assert served.call("GetServerStats")["config_version"] == 4.0
    assert [line.split(" path=")[1] for line in audit] == [
        f"/speedproxy.admin.v1.Admin/{name} outcome=allowed status=200 grpc_status=OK"
        for name in ("AddBackend", "UpdateBackend", "Report", "DisconnectBackend", "RemoveBackend")
    ]
    assert all(" peer=127.0.0.1 method=GRPC " in line for line in audit)


def test_refusals(served: Served, audit: List[str]) -> None:
    error = served.error("GetConfig", key=None)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = served.error("ListBackends", key="nope")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    body = json.loads(dict(error.trailing_metadata())["x-error-body"])
    assert body == {"error": "unauthorized", "detail": "the x-api-key is wrong", "reason": "wrong_key"}
    error = served.error("UpdateBackend", struct_request(admin_pb2.UpdateBackendRequest, upstream="default",
                                                         backend={"id": "a", "port": 1}))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert json.loads(dict(error.trailing_metadata())["x-error-body"])["field"] == "port"
    assert served.error("ReloadSSL").code() == grpc.StatusCode.FAILED_PRECONDITION
    assert served.error("ReplaceConfig").code() == grpc.StatusCode.INVALID_ARGUMENT  # no config
    assert [line.split(" outcome=")[1] for line in audit] == [
        "denied status=401 grpc_status=UNAUTHENTICATED reason=missing_key",
        "denied status=401 grpc_status=UNAUTHENTICATED reason=wrong_key",
        "failed status=400 grpc_status=INVALID_ARGUMENT",
        "failed status=409 grpc_status=FAILED_PRECONDITION",
        "failed status=400 grpc_status=INVALID_ARGUMENT",
    ]
    assert served.control.config_version == 1


def test_without_a_key_the_api_is_open() -> None:
    served = Served(key=None)
    try:
        assert served.call("GetConfig", key=None)["config_version"] == 1.0
    finally:
        served.close()


def test_a_change_that_does_not_finish_hits_the_deadline(served: Served) -> None:
    served.control.update_config = lambda make: Deferred()  # type: ignore[assignment]
    update = admin_pb2.UpdateBackendRequest(upstream="default", backend_id="a")
    update.backend.update({"weight": 3})
    assert served.error("UpdateBackend", update, timeout=0.5).code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_closed_bridge_answers_unavailable(served: Served) -> None:
    served.bridge.close()
    error = served.error("GetConfig")
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "stopping" in error.details()


def test_watch_stats_counts_and_stops(served: Served) -> None:
    metadata = [("x-api-key", KEY)]
    updates = list(served.stub.WatchStats(admin_pb2.WatchStatsRequest(interval_seconds=0.1, count=3, backends=True),
                                          metadata=metadata, timeout=5))
    assert [u.sequence for u in updates] == [1, 2, 3]
    assert json_format.MessageToDict(updates[0].server)["config_version"] == 1.0
    assert [row["id"] for row in json_format.MessageToDict(updates[0].backends)["backends"]] == ["a"]
    # One watcher at most here (max_watchers=1): a second is refused while the first runs.
    stream = served.stub.WatchStats(admin_pb2.WatchStatsRequest(interval_seconds=60), metadata=metadata, timeout=10)
    assert next(stream).sequence == 1
    with pytest.raises(grpc.RpcError) as refused:
        next(served.stub.WatchStats(admin_pb2.WatchStatsRequest(interval_seconds=60), metadata=metadata, timeout=5))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Stopping ends the open stream at once (not after its 60 s interval).
    outcome: Dict[str, Any] = {}

    def drain() -> None:
        try:
            list(stream)
        except grpc.RpcError as error:
            outcome["code"] = error.code()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    served.servicer.stop()
    reader.join(5.0)
    assert outcome.get("code") == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as refused:
        next(served.stub.WatchStats(admin_pb2.WatchStatsRequest(), metadata=metadata, timeout=5))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_peer_host() -> None:
    assert peer_host("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("unix:/run/x.sock") == "unix:/run/x.sock"
    assert peer_host("") == "-"


class _CountingContext:
    """A grpc context that keeps the callbacks an RPC adds (as grpc does)."""

    def __init__(self) -> None:
        self.callbacks: list = []

    def add_callback(self, callback):
        self.callbacks.append(callback)
        return True

    def invocation_metadata(self):
        return ()

    def peer(self):
        return "ipv4:127.0.0.1:1"

    def time_remaining(self):
        return None

    def is_active(self):
        return True

    def abort(self, code, detail):
        raise RuntimeError(detail)

    def set_trailing_metadata(self, metadata):
        pass


def test_watch_stats_registers_one_callback_whatever_the_updates(monkeypatch):
    from twisted.internet.defer import succeed

    from speedproxy.admin.grpc import convert
    from speedproxy.admin.grpc.bridge import ReactorBridge
    from speedproxy.admin.grpc.servicer import AdminServicer
    from grpc_unit_support import ImmediateReactor

    class Facade:
        def check_key(self, key):
            return None

        def server_stats(self):
            return succeed({"requests": 1})

        def backend_stats(self, verbose):
            return succeed([])

    monkeypatch.setattr(convert, "watch_interval", lambda seconds, default=5.0: 0.0)
    servicer = AdminServicer(Facade(), ReactorBridge(ImmediateReactor()))
    context = _CountingContext()
    updates = list(servicer.WatchStats(admin_pb2.WatchStatsRequest(interval_seconds=1, count=50), context))
    assert len(updates) == 50
    assert len(context.callbacks) <= 2  # the authorisation's and the stream's
    for callback in context.callbacks:
        callback()  # cancelling after the end is harmless
