"""Tests for :mod:`speedproxy.admin.grpc.service`: start, health, stop, a taken port."""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable, Dict

import pytest
from twisted.internet.task import Clock

from grpc_unit_support import CONFIG, FakeControl

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from speedproxy.admin.grpc import admin_pb2, admin_pb2_grpc
from speedproxy.admin.grpc.service import GrpcAdminService
from speedproxy.admin.site import admin_site
from speedproxy.config import parse_config
from speedproxy.master.listeners import ListenError, bind_all
from speedproxy.testing import free_port


class FakeReactor(Clock):
    """A clock whose ``callFromThread`` runs at once (in the calling thread)."""

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:
        function(*args)


class Control(FakeControl):
    def __init__(self, port: int) -> None:
        super().__init__(parse_config(CONFIG + f"grpc: {{enabled: true, host: 127.0.0.1, port: {port}}}\n"))
        self.ready = False
        self.admin_site = admin_site(self, environ={})

    def state(self) -> Dict[str, Any]:
        state = super().state()
        state["workers"] = [dict(worker, ready=self.ready) for worker in state["workers"]]
        return state


def health(port: int, service: str = "") -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def stopped(service: GrpcAdminService) -> None:
    fired = threading.Event()
    service.stopService().addBoth(lambda _: fired.set())
    service.reactor.advance(service.stop_grace)  # the bridge's release, if the stop takes that long
    assert fired.wait(10.0), "the service did not stop"


def test_start_health_and_stop() -> None:
    port = free_port()
    control = Control(port)
    (listener,) = bind_all([("grpc.host/grpc.port", "127.0.0.1", port)])
    service = GrpcAdminService(FakeReactor(), control, listener, stop_grace=0.5)
    service.startService()
    try:
        assert service.port == port
        assert listener.sock.fileno() == -1  # handed over: closed before grpcio bound the port
        assert health(port) == "NOT_SERVING"  # no worker ready yet
        control.ready = True
        service.reactor.advance(service.health_interval)
        assert health(port) == "SERVING"
        assert health(port, "speedproxy.admin.v1.Admin") == "SERVING"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = admin_pb2_grpc.AdminStub(channel).GetConfig(admin_pb2.GetConfigRequest(), timeout=5)
        assert answer["config"]["grpc"]["port"] == port
    finally:
        stopped(service)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.AdminStub(channel).GetConfig(admin_pb2.GetConfigRequest(), timeout=2)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not service.running


def test_a_taken_port_is_a_listen_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        service = GrpcAdminService(FakeReactor(), Control(port), None)
        with pytest.raises(ListenError) as refused:
            service.startService()
        assert "grpc.host/grpc.port" in str(refused.value) and str(port) in str(refused.value)
    finally:
        taken.close()


def test_the_admin_api_must_be_up_first() -> None:
    control = Control(free_port())
    control.admin_site = None
    with pytest.raises(RuntimeError, match="admin API started first"):
        GrpcAdminService(FakeReactor(), control).startService()
