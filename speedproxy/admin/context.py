"""What every admin resource shares, and how a change is carried out.

The *control* is the object that runs the data path: the
:class:`~speedproxy.master.service.MasterService` (workers), or the
:class:`~speedproxy.worker.service.ProxyWorkerService` when
``server.workers`` is 0.  Both offer the same surface, described by
:class:`AdminControl`.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

from twisted.internet.defer import Deferred

from speedproxy.admin.auth import KeyChecker
from speedproxy.admin.changes import write_config_file
from speedproxy.config.model import restart_required
from speedproxy.admin.json_resource import APIError, JSONResource, bad_request, read_json
from speedproxy.admin.sampler import StatsSampler
from speedproxy.config import Config
from speedproxy.tls import TLSConfigError

try:  # typing.Protocol is 3.8+
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]


class AdminControl(Protocol):
    """The control surface the admin API drives."""

    reactor: Any
    config: Config
    config_version: int
    config_path: Optional[str]
    started_at: float
    mode: str
    #: The way to the caches of every serving process: ``each(action,
    #: **arguments)`` (one row per process), ``slots()``, ``warm(slot, url)``
    #: and ``disk_info()`` (see :mod:`speedproxy.admin.cache_worker`).
    cache_fanout: Any

    def state(self) -> Dict[str, Any]:
        """``config``, ``index``, ``workers``, ``restarts``, ``config_version``, ``backend_up``."""

    def stats_snapshot(self) -> Dict[str, Any]:
        """Everything behind ``/stats``."""

    def metrics_text(self, cache_disk: Optional[Dict[str, Any]] = None) -> bytes:
        """Prometheus text (``cache_disk``: the disk cache tier's figures, when known)."""

    def update_config(self, make: Callable[[Config], Config]) -> Deferred:
        """Apply ``make(current)`` everywhere, serialised; fires with the new version."""

    def disconnect_backend(self, upstream: str, backend_id: str) -> Deferred:
        """Fires with one ``{"closed": n}`` per worker."""

    def report_load(self, upstream: str, backend_id: str, load: float) -> Deferred:
        """Push a reported load (0..1) to every worker."""

    def inspect_workers(self, active_limit: int = 0, slow_limit: int = 0) -> Deferred:
        """Fires with one report per worker (see ``tracking.inspect_core``)."""

    def process_table(self) -> List[Dict[str, Any]]:
        """``role``, ``slot`` and ``pid`` of every process."""

    def reload_ssl(self) -> Deferred:
        """Read the TLS certificate files again everywhere.

        Fires with ``{"reloaded": True, "workers": n, "certificate": {...}}``;
        fails with ``TLSNotEnabled``, ``TLSConfigError`` or
        ``TLSReloadIncomplete`` (:mod:`speedproxy.tls`).
        """


#: Defaults of ``/api/v1/performance/alerts/thresholds``.
DEFAULT_THRESHOLDS: Dict[str, float] = {
    # Fraction of 5xx answers over the last 60 s.
    "error_rate": 0.05,
    # Mean and 99th percentile latency over the last 60 s, in ms.
    "avg_latency_ms": 1000.0,
    "p99_latency_ms": 5000.0,
    # Slow requests (server.slow_request_threshold) seen in the last 60 s.
    "slow_requests_per_minute": 10.0,
    # Per process.
    "cpu_percent": 90.0,
    "rss_mb": 1024.0,
    # Open file descriptors over the soft limit, per process.
    "fd_usage": 0.8,
    # Open client connections over server.max_conn x workers.
    "connection_usage": 0.9,
}


class AdminContext:
    """State shared by the admin resources of one site."""

    def __init__(
        self,
        control: Any,
        clock: Any = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.control = control
        self.clock = clock if clock is not None else control.reactor
        self.checker = KeyChecker(environ)
        self.environ = environ
        self.sampler = StatsSampler(control.stats_snapshot, self.clock)
        self.thresholds: Dict[str, float] = dict(DEFAULT_THRESHOLDS)
        #: Backends removed through the API, for a later disconnect.
        self.removed: Deque[Tuple[str, str]] = deque(maxlen=256)
        #: The last raw report of each backend (``/api/v1/report``).
        self.reports: Dict[Tuple[str, str], Dict[str, Any]] = {}

    @property
    def config(self) -> Config:
        return self.control.config

    def config_file(self) -> Optional[str]:
        """The file ``persist`` writes to, if any."""
        return self.control.config.source or getattr(self.control, "config_path", None)

    def live_workers(self) -> int:
        return sum(1 for worker in self.control.state()["workers"] if worker.get("ready"))

    def run_change(self, make: Callable[[Config], Config], persist: bool = False) -> Deferred:
        """Apply a config change everywhere; fires with the answer body.

        The answer names the config version now live.  A change no worker
        could apply fails with 500 ``apply_failed`` (nothing is left half
        applied: the workers that took it are put back); a change the stats
        segment has no room for fails with 409 ``no_room``.
        """
        path = self.config_file() if persist else None
        if persist and not path:
            raise bad_request("persist: speedproxy was not started from a config file", "persist")
        holder: Dict[str, Config] = {}

        def wrapped(current: Config) -> Config:
            new = make(current)
            holder["old"], holder["new"] = current, new
            return new

        def done(version: int) -> Dict[str, Any]:
            body: Dict[str, Any] = {"config_version": version, "workers": self.live_workers()}
            restart = restart_required(holder["old"], holder["new"])
            if restart:
                body["restart_required"] = restart
            if persist and path:
                try:
                    backup = write_config_file(holder["new"], path)
                except OSError as error:
                    raise APIError(
                        500,
                        "persist_failed",
                        f"config version {version} is live but could not be written to {path}: {error}",
                        extra={"config_version": version, "applied": True},
                    ) from None
                body["persisted"] = path
                if backup:
                    body["backup"] = backup
            return body

        def failed(failure: Any) -> Any:
            if failure.check(APIError):
                return failure
            current = self.control.config_version
            if failure.check(TLSConfigError):
                raise APIError(400, "invalid_certificate", failure.getErrorMessage(), failure.value.field,
                               {"config_version": current})
            if failure.check(ValueError):
                raise APIError(409, "no_room", failure.getErrorMessage(), extra={"config_version": current})
            raise APIError(
                500,
                "apply_failed",
                f"the change was not applied: {failure.getErrorMessage()}",
                extra={"config_version": current, "applied": False},
            )

        return self.control.update_config(wrapped).addCallbacks(done, failed)


def params(request: Any, body_allowed: bool = True) -> Dict[str, Any]:
    """Query parameters (first values, as text) updated by a JSON object body."""
    result: Dict[str, Any] = {}
    for key, values in (request.args or {}).items():
        if values:
            result[key.decode("utf-8", "replace")] = values[0].decode("utf-8", "replace")
    if body_allowed:
        data = read_json(request, required=False)
        if data is not None:
            if not isinstance(data, dict):
                raise bad_request(f"the body must be a JSON object, got {type(data).__name__}")
            result.update(data)
    return result


def as_bool(value: Any, name: str) -> bool:
    """A boolean parameter given as JSON or as query text (400 otherwise)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise bad_request(f"{name} must be true or false, got {value!r}", name)


class APIResource(JSONResource):
    """A JSON resource of the control API, holding the shared :class:`AdminContext`."""

    def __init__(self, api: AdminContext) -> None:
        super().__init__()
        self.api = api
