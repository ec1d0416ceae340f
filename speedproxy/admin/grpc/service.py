"""The gRPC management service's life in the master: start, health, stop.

:class:`GrpcAdminService` runs a grpcio server (its own thread pool) on
``grpc.host:grpc.port`` next to the JSON admin API, sharing its admin
context (API key, thresholds, reports): the admin service
(:mod:`speedproxy.admin.grpc.servicer`), ``grpc.health.v1.Health`` and
server reflection.  Health: ``""`` and ``speedproxy.admin.v1.Admin`` are
SERVING while at least one worker serves, NOT_SERVING otherwise and from
the moment speedproxy stops.  On stop (SIGTERM), new calls are refused,
calls in flight get ``stop_grace`` seconds, ``WatchStats`` streams end with
UNAVAILABLE, and the service's Deferred fires once grpcio has stopped.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from speedproxy.master.listeners import ListenError, format_address

log = Logger(namespace="speedproxy.admin.grpc")

#: The config keys named when the gRPC port cannot be bound.
GRPC_KEY = "grpc.host/grpc.port"


class GrpcAdminService(Service):
    """Serves ``speedproxy.admin.v1.Admin``, health and reflection for ``control``.

    ``control`` is the :class:`~speedproxy.master.service.MasterService` (or
    the single-process worker service); its ``admin_site`` must be up, so
    this service is started after it.  ``listener``: the address bound by
    ``twistd speedproxy`` before start-up (so a taken port stops start-up
    like any listener); it is closed just before grpcio binds the same
    address itself (grpcio cannot adopt a socket).
    """

    name = "speedproxy-grpc"

    def __init__(
        self,
        reactor: Any,
        control: Any,
        listener: Any = None,
        max_workers: int = 16,
        stop_grace: float = 2.0,
        health_interval: float = 1.0,
    ) -> None:
        self.reactor = reactor
        self.control = control
        self.listener = listener
        self.max_workers = max_workers
        self.stop_grace = stop_grace
        self.health_interval = health_interval
        self.server: Any = None
        self.port = 0
        self.bridge: Any = None
        self.servicer: Any = None
        self.health: Any = None
        self._executor: Any = None
        self._health_loop: Optional[LoopingCall] = None
        self._serving: Optional[bool] = None

    def startService(self) -> None:
        super().startService()
        from concurrent import futures

        import grpc
        from grpc_health.v1 import health, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        from speedproxy.admin.facade import AdminFacade
        from speedproxy.admin.grpc import admin_pb2_grpc
        from speedproxy.admin.grpc.bridge import ReactorBridge
        from speedproxy.admin.grpc.servicer import SERVICE, AdminServicer

        site = getattr(self.control, "admin_site", None)
        if site is None:
            raise RuntimeError("the gRPC management service needs the admin API started first")
        config = self.control.config.grpc
        self.bridge = ReactorBridge(self.reactor)
        self.servicer = AdminServicer(AdminFacade(site.api), self.bridge)
        self._executor = futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="speedproxy-grpc")
        # No SO_REUSEPORT: a second speedproxy on the same port must fail, not share it.
        server = grpc.server(self._executor, options=[("grpc.so_reuseport", 0)])
        admin_pb2_grpc.add_AdminServicer_to_server(self.servicer, server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        address = format_address(config.host, config.port)
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as error:  # grpcio >= 1.60 raises instead of answering 0
            self.port = 0
            reason: BaseException = OSError(str(error))
        else:
            reason = OSError("grpcio could not bind it")
        if not self.port:
            self._executor.shutdown(wait=False)
            raise ListenError(config.host, config.port, GRPC_KEY, reason)
        self.server = server
        server.start()
        self._health_loop = LoopingCall(self._update_health)
        self._health_loop.clock = self.reactor
        self._health_loop.start(self.health_interval, now=True)
        log.info("gRPC management service on {address} ({service}, health, reflection)", address=address, service=SERVICE)

    def _update_health(self) -> None:
        """SERVING while at least one worker serves (checked every ``health_interval``)."""
        from grpc_health.v1 import health_pb2

        from speedproxy.admin.grpc.servicer import SERVICE

        workers = self.control.state().get("workers", [])
        serving = any(worker.get("ready") for worker in workers)
        if serving == self._serving:
            return
        self._serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            self.health.set(name, status)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._health_loop is not None and self._health_loop.running:
            self._health_loop.stop()
        server, self.server = self.server, None
        if server is None:
            return succeed(None)
        self.health.enter_graceful_shutdown()
        self.servicer.stop()
        stopped = server.stop(self.stop_grace)
        # Calls still waiting for the reactor after the grace are released
        # (UNAVAILABLE), so grpcio's threads can finish before the reactor stops.
        release = self.reactor.callLater(self.stop_grace, self.bridge.close)
        done: Deferred = Deferred()

        def wait() -> None:
            stopped.wait(self.stop_grace + 10.0)
            self.reactor.callFromThread(done.callback, None)

        threading.Thread(target=wait, name="speedproxy-grpc-stop", daemon=True).start()

        def finished(result: Any) -> Any:
            if release.active():
                release.cancel()
            self.bridge.close()
            self._executor.shutdown(wait=False)
            log.info("gRPC management service stopped")
            return result

        return done.addBoth(finished)
