"""``speedproxy.admin.v1.Admin``: the JSON admin API's calls over gRPC.

Each RPC is one :class:`Call`: the JSON call it stands for (whose HTTP
method decides, as in the JSON API, whether it is audited) and how it runs
on the :class:`~speedproxy.admin.facade.AdminFacade` shared with the JSON
site.  Handlers run in grpcio's threads; the key check, the call itself
and the audit line run in the reactor thread through the
:class:`~speedproxy.admin.grpc.bridge.ReactorBridge`.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import grpc
from google.protobuf import struct_pb2
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from speedproxy.admin.audit import SAFE_METHODS, write_line
from speedproxy.admin.facade import AdminFacade
from speedproxy.admin.grpc import admin_pb2, admin_pb2_grpc, convert
from speedproxy.admin.grpc.bridge import BridgeClosed, BridgeTimeout, ReactorBridge
from speedproxy.admin.json_resource import APIError

log = Logger(namespace="speedproxy.admin.grpc")

#: The full name of the service.
SERVICE = "speedproxy.admin.v1.Admin"

#: The metadata key carrying the API key (gRPC metadata keys are lower case).
KEY_METADATA = "x-api-key"

#: Longest wait for the reactor when the client set no deadline (a config
#: change waits for every worker, each within the master's push timeout).
DEFAULT_TIMEOUT = 120.0

#: WatchStats streams served at once (each holds one gRPC thread).
MAX_WATCHERS = 8


@dataclass(frozen=True)
class Call:
    """One unary RPC: the JSON call it mirrors and how it runs."""

    #: The JSON API's method for the same call (GET/HEAD are not audited).
    method: str
    #: The JSON API's path, for the README and error messages.
    path: str
    run: Callable[[AdminFacade, Any], Deferred]


CALLS: Dict[str, Call] = {
    "GetConfig": Call("GET", "/api/v1/config", lambda f, r: f.get_config()),
    "ReplaceConfig": Call(
        "PUT", "/api/v1/config", lambda f, r: f.replace_config(convert.replace_config_body(r))
    ),
    "ReloadSSL": Call("POST", "/api/v1/config/reload-ssl", lambda f, r: f.reload_ssl()),
    "ListBackends": Call("GET", "/api/v1/backends", lambda f, r: f.list_backends(convert.backend_values(r))),
    "AddBackend": Call("POST", "/api/v1/backends/add", lambda f, r: f.add_backend(convert.add_backend_values(r))),
    "UpdateBackend": Call(
        "PUT", "/api/v1/backends/update", lambda f, r: f.update_backend(convert.update_backend_values(r))
    ),
    "RemoveBackend": Call(
        "DELETE", "/api/v1/backends/remove", lambda f, r: f.remove_backend(convert.backend_values(r))
    ),
    "DisconnectBackend": Call(
        "POST", "/api/v1/backends/disconnect", lambda f, r: f.disconnect_backend(convert.backend_values(r))
    ),
    "GetServerStats": Call("GET", "/api/v1/stats/server", lambda f, r: f.server_stats()),
    "GetBackendStats": Call(
        "GET", "/api/v1/stats/backend", lambda f, r: f.backend_stats(convert.backend_values(r, persist=False))
    ),
    "Report": Call("POST", "/api/v1/report", lambda f, r: f.report(convert.report_values(r))),
}


def peer_host(peer: str) -> str:
    """The address of a gRPC peer string (``ipv4:127.0.0.1:5000`` -> ``127.0.0.1``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition(":")[0] or rest
        return host.strip("[]")
    return peer or "-"


def unauthorized(reason: str) -> APIError:
    detail = "a valid x-api-key metadata entry is required" if reason == "missing_key" else "the x-api-key is wrong"
    return APIError(401, "unauthorized", detail, extra={"reason": reason})


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """Serves :data:`CALLS` and ``WatchStats`` from a facade, through a bridge."""

    def __init__(self, facade: AdminFacade, bridge: ReactorBridge, max_watchers: int = MAX_WATCHERS) -> None:
        self.facade = facade
        self.bridge = bridge
        self._watch_slots = threading.BoundedSemaphore(max_watchers)
        self._wakes: List[threading.Event] = []
        self._lock = threading.Lock()
        self._stopping = False

    # -- reactor side ------------------------------------------------------------------

    def _audit(self, name: str, method: bytes, peer: str, status: int, reason: Optional[str] = None,
               aborted: bool = False, code: str = "OK") -> None:
        if status != 401 and method in SAFE_METHODS:
            return
        write_line(peer, "GRPC", f"/{SERVICE}/{name}", status, reason, aborted, extra=f"grpc_status={code}")

    def _authorise(self, name: str, method: bytes, key: Optional[bytes], peer: str) -> None:
        reason = self.facade.check_key(key)
        if reason is not None:
            self._audit(name, method, peer, 401, reason, code="UNAUTHENTICATED")
            raise unauthorized(reason)

    def _run(self, name: str, request: Any, key: Optional[bytes], peer: str, context: Any) -> Deferred:
        """In the reactor: check the key, run the call, write the audit line."""
        call = CALLS[name]
        method = call.method.encode("ascii")
        self._authorise(name, method, key, peer)

        def done(body: Any) -> Any:
            self._audit(name, method, peer, 200, aborted=not context.is_active())
            return body

        def failed(failure: Failure) -> Any:
            if failure.check(APIError):
                error = failure.value
                self._audit(name, method, peer, error.status, aborted=not context.is_active(),
                            code=convert.code_name(error))
            else:
                log.failure("gRPC admin call {name} failed", failure, name=name)
                self._audit(name, method, peer, 500, code="INTERNAL")
            return failure

        return maybeDeferred(call.run, self.facade, request).addCallbacks(done, failed)

    # -- gRPC threads ------------------------------------------------------------------

    @staticmethod
    def _key(context: Any) -> Optional[bytes]:
        for item in context.invocation_metadata() or ():
            if item.key.lower() == KEY_METADATA:
                value = item.value
                return value if isinstance(value, bytes) else value.encode("utf-8")
        return None

    @staticmethod
    def _timeout(context: Any) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return DEFAULT_TIMEOUT
        return max(0.0, min(remaining, DEFAULT_TIMEOUT * 10))

    def _wait(self, context: Any, function: Callable[..., Any], *args: Any, current: Optional[List[Any]] = None) -> Any:
        """Run ``function`` in the reactor; abort the RPC with the matching status on failure.

        ``current``: a one-item list the RPC's single callback cancels (a
        stream waits many times; grpc keeps every callback added until the
        RPC ends, so a stream registers one and points it at each waiter).
        """
        waiter = self.bridge.submit(function, *args)
        if current is None:
            context.add_callback(waiter.cancel)
        else:
            current[0] = waiter
        try:
            return self.bridge.wait(waiter, self._timeout(context))
        except APIError as error:
            context.set_trailing_metadata(convert.error_trailer(error))
            context.abort(getattr(grpc.StatusCode, convert.code_name(error)), error.detail)
        except BridgeClosed as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        except BridgeTimeout as error:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
        except CancelledError:
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")
        except Exception as error:  # logged in the reactor
            context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")

    def _unary(self, name: str, request: Any, context: Any) -> Any:
        peer = peer_host(context.peer())
        body = self._wait(context, self._run, name, request, self._key(context), peer, context)
        return convert.to_struct(body, struct_pb2.Struct)

    def GetConfig(self, request: Any, context: Any) -> Any:
        return self._unary("GetConfig", request, context)

    def ReplaceConfig(self, request: Any, context: Any) -> Any:
        return self._unary("ReplaceConfig", request, context)

    def ReloadSSL(self, request: Any, context: Any) -> Any:
        return self._unary("ReloadSSL", request, context)

    def ListBackends(self, request: Any, context: Any) -> Any:
        return self._unary("ListBackends", request, context)

    def AddBackend(self, request: Any, context: Any) -> Any:
        return self._unary("AddBackend", request, context)

    def UpdateBackend(self, request: Any, context: Any) -> Any:
        return self._unary("UpdateBackend", request, context)

    def RemoveBackend(self, request: Any, context: Any) -> Any:
        return self._unary("RemoveBackend", request, context)

    def DisconnectBackend(self, request: Any, context: Any) -> Any:
        return self._unary("DisconnectBackend", request, context)

    def GetServerStats(self, request: Any, context: Any) -> Any:
        return self._unary("GetServerStats", request, context)

    def GetBackendStats(self, request: Any, context: Any) -> Any:
        return self._unary("GetBackendStats", request, context)

    def Report(self, request: Any, context: Any) -> Any:
        return self._unary("Report", request, context)

    def _snapshot(self, backends: bool) -> Deferred:
        """In the reactor: the server stats and, if asked, every backend's."""
        server = self.facade.server_stats()
        if not backends:
            return server.addCallback(lambda body: (body, None))
        return server.addCallback(
            lambda body: self.facade.backend_stats({}).addCallback(lambda rows: (body, rows))
        )

    def WatchStats(self, request: Any, context: Any) -> Iterator[Any]:
        """The stats every ``interval_seconds`` until cancelled, ``count`` is reached or shutdown."""
        interval = convert.watch_interval(request.interval_seconds)
        if interval is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "interval_seconds must be 0 (5 s) or 0.1 to 3600")
        peer = peer_host(context.peer())
        self._wait(context, self._authorise, "WatchStats", b"GET", self._key(context), peer)
        if not self._watch_slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many WatchStats calls at once")
        wake = threading.Event()
        with self._lock:
            self._wakes.append(wake)
            stopping = self._stopping
        current: List[Any] = [None]

        def ended() -> None:
            wake.set()
            waiter = current[0]
            if waiter is not None:
                waiter.cancel()

        context.add_callback(ended)  # one per RPC, whatever the number of updates
        try:
            sequence = 0
            while not stopping:
                server, backends = self._wait(context, self._snapshot, request.backends, current=current)
                current[0] = None
                sequence += 1
                update = admin_pb2.StatsUpdate(sequence=sequence, time=time.time())
                update.server.CopyFrom(convert.to_struct(server, struct_pb2.Struct))
                if backends is not None:
                    update.backends.CopyFrom(convert.to_struct(backends, struct_pb2.Struct))
                yield update
                if request.count and sequence >= request.count:
                    return
                # The interval is the timer; cancellation or shutdown end it early.
                wake.wait(interval)
                with self._lock:
                    stopping = self._stopping
                if not context.is_active():
                    return
            context.abort(grpc.StatusCode.UNAVAILABLE, "speedproxy is stopping")
        finally:
            with self._lock:
                if wake in self._wakes:
                    self._wakes.remove(wake)
            self._watch_slots.release()

    def stop(self) -> None:
        """End every ``WatchStats`` stream (UNAVAILABLE) and refuse new ones (thread-safe)."""
        with self._lock:
            self._stopping = True
            wakes = list(self._wakes)
        for wake in wakes:
            wake.set()
