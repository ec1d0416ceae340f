"""The master: binds listeners, owns the config and stats segment, serves the admin API.

The master never serves proxy traffic.  It owns the config (file, SIGHUP,
admin API), the stats segment's name→index map and the worker processes;
it talks to each worker over AMP (:mod:`speedproxy.master.control`).
:class:`MasterService` is the admin API's control surface and composes
the jobs that have their own modules: the worker processes
(:mod:`speedproxy.master.supervision`), config changes
(:mod:`speedproxy.master.rollout`) and certificate reloads
(:mod:`speedproxy.master.tls_reload`).
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredLock, gatherResults
from twisted.logger import Logger

from speedproxy import __version__
from speedproxy.config import Config
from speedproxy.edge.host_table import edge_state_path, remove_edge_state
from speedproxy.master.cache_fanout import MasterCacheFanout
from speedproxy.master.control import DisconnectBackend, Inspect, SetBackendState, SetReportedLoad
from speedproxy.master.listeners import ADMIN_KEY, PROXY_KEY, Listener, bind_all, parse_listen
from speedproxy.master.rollout import ConfigRollout
# WorkerHandle and worker_count stay importable from here (they moved to supervision).
from speedproxy.master.supervision import MasterControl, Supervisor, WorkerHandle, worker_count
from speedproxy.master.tls_reload import TLSReload
from speedproxy.stats.prometheus import SegmentCollector, render_metrics
from speedproxy.stats.reader import StatsReader
from speedproxy.stats.segment import StatsIndex, StatsSegment, backend_keys, layout_for
from speedproxy.tls import LoadedCertificate, load_certificate

log = Logger(namespace="speedproxy.master")

#: A worker that has not answered a config push (or an inspection) within
#: this many seconds is treated as having refused it.
PUSH_TIMEOUT = 10.0


class MasterService(Service):
    """Runs ``server.workers`` worker processes behind shared listeners.

    It holds what the admin API reads and changes (the config and its
    version, the stats index, backend states, the certificate) and hands
    the jobs with their own modules to its parts: :attr:`supervisor`,
    :attr:`rollout` and :attr:`tls_reload`.
    """

    name = "speedproxy-master"

    def __init__(
        self,
        reactor: Any,
        config: Config,
        config_path: Optional[str],
        *,
        listener: Optional[Listener] = None,
        admin_listener: Optional[Listener] = None,
    ) -> None:
        """``listener`` and ``admin_listener``: already bound and listening
        (``twistd speedproxy`` binds them all before starting anything, see
        :func:`speedproxy.master.listeners.bind_all`); without them they are
        bound when the service starts."""
        self.reactor = reactor
        self.config = config
        self.config_path = config_path
        self.config_version = 1
        self.index = StatsIndex()
        self.started_at = time.time()
        self.listener: Optional[socket.socket] = listener.sock if listener is not None else None
        self.family = listener.family_name if listener is not None else "inet"
        #: The admin API's bound socket until it is adopted by the reactor.
        self._admin_listener = admin_listener
        self.segment: Optional[StatsSegment] = None
        self.reader: Optional[StatsReader] = None
        self.admin_port: Any = None
        self.backend_health: Dict[Tuple[str, str], bool] = {}
        #: Active health checks (started with the service).
        self.health: Any = None
        self._stats_path = ""
        self._signals_installed = False
        #: Loads reported through ``/api/v1/report``, re-sent to new workers.
        self.reported_loads: Dict[Tuple[str, str], float] = {}
        self.admin_site: Any = None
        self.push_timeout = PUSH_TIMEOUT
        #: Whether the listener serves TLS: ``ssl.enabled`` at start (a
        #: change needs a restart, so workers are always told this one).
        self.tls_listener = config.ssl.enabled
        #: The certificate new TLS handshakes get (``None`` without TLS).
        self.certificate: Optional[LoadedCertificate] = None
        #: The worker processes: spawn, respawn with backoff, resize, stop.
        self.supervisor = Supervisor(self)
        #: Serialises config changes (SIGHUP, admin API) and certificate
        #: reloads: each one is computed from the config the previous one
        #: left live.
        changes = DeferredLock()
        #: Config changes, pushed to every worker all or nothing.
        self.rollout = ConfigRollout(self, changes)
        #: Certificate reloads on every worker.
        self.tls_reload = TLSReload(self, changes)
        #: The admin API's way to the workers' caches.
        self.cache_fanout = MasterCacheFanout(self)
        #: This node's place in the fleet (``cluster.redis``; ``None``: alone).
        self.fleet: Any = None
        #: Traffic accounting (``accounting``; ``None``: off).
        self.accounting: Any = None

    @property
    def workers(self) -> Dict[int, WorkerHandle]:
        """The worker slots, by slot number (the supervisor's)."""
        return self.supervisor.workers

    @property
    def restarts(self) -> int:
        """Workers respawned after dying."""
        return self.supervisor.restarts

    # -- start ---------------------------------------------------------------

    #: What the admin API reports as the process model.
    mode = "master"

    def privilegedStartService(self) -> None:
        """Bind the listeners (unless given) before privileges are dropped."""
        from speedproxy.admin.auth import refuse_insecure_admin

        refuse_insecure_admin(self.config)
        if self.listener is None:
            server = self.config.server
            wanted = [(PROXY_KEY, server.host, server.port)]
            if self._admin_listener is None:
                wanted.append((ADMIN_KEY, *parse_listen(self.config.admin.listen)))
            bound = bind_all(wanted)
            self.listener, self.family = bound[0].sock, bound[0].family_name
            if self._admin_listener is None:
                self._admin_listener = bound[1]
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        if self.listener is None:
            self.privilegedStartService()
        config = self.config
        if self.tls_listener:
            self.certificate = load_certificate(config.ssl.cert_file, config.ssl.key_file)
        count = worker_count(config)
        layout = layout_for(max(16, 2 * count), len(config.routing), len(backend_keys(config)))
        directory = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        fd, self._stats_path = tempfile.mkstemp(prefix="speedproxy-stats-", dir=directory)
        os.close(fd)
        self.segment = StatsSegment.create(self._stats_path, layout)
        self.reader = StatsReader(self.segment)
        self.index.assign_config(config, layout)
        self._start_admin()
        from speedproxy.cluster.node import start_fleet

        from speedproxy.cluster.accounting import start_accounting

        self.fleet = start_fleet(self)
        self.accounting = start_accounting(self)
        from speedproxy.health.http import HTTPHealthChecker
        from speedproxy.health.monitor import HealthMonitor

        # Active checks run here, once per backend, never in the workers.
        self.health = HealthMonitor(self.reactor, HTTPHealthChecker(self.reactor), self._health_changed)
        self.health.update(config.backends)
        self.supervisor.start(count)
        address = self.listener.getsockname()  # type: ignore[union-attr]
        self._address = address
        self._announced = False
        log.info(
            "speedproxy {version} master (pid {pid}) listening on {host}:{port}, starting {count} workers",
            version=__version__, pid=os.getpid(), host=address[0], port=address[1], count=count,
        )
        self.reactor.callWhenRunning(self._install_signals)

    def _start_admin(self) -> None:
        from speedproxy.admin.site import admin_site

        host, port = parse_listen(self.config.admin.listen)
        self.admin_site = admin_site(self)
        bound, self._admin_listener = self._admin_listener, None
        if bound is not None:
            try:
                self.admin_port = self.reactor.adoptStreamPort(bound.sock.fileno(), bound.sock.family, self.admin_site)
            finally:
                bound.close()  # the port holds its own copy of the descriptor
        else:
            self.admin_port = self.reactor.listenTCP(port, self.admin_site, interface=host)
        log.info("admin API on {host}:{port}", host=host, port=self.admin_port.getHost().port)

    def _install_signals(self) -> None:
        self._signals_installed = True
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        signal.signal(signal.SIGUSR1, self._on_reopen_signal)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)

    def _on_reopen_signal(self, signum: int, frame: Any) -> None:
        """SIGUSR1 (logrotate): every worker reopens its access log file."""
        self.supervisor.signal_all(signal.SIGUSR1)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        if self.supervisor.stopping:
            # Second signal: no more waiting.
            self.supervisor.signal_all(signal.SIGKILL)
            os._exit(1)
        self.reactor.callFromThread(self.reactor.stop)

    # -- workers ---------------------------------------------------------------

    def worker_connected(self, handle: WorkerHandle, control: MasterControl) -> None:
        """A worker's control channel is up: it is given the live config."""
        handle.control = control
        self.rollout.welcome(handle)

    def worker_ready(self, handle: WorkerHandle, pid: int, version: int) -> None:
        """A worker serves: it is told what the master knows of the backends."""
        handle.ready = True
        handle.version = version
        log.info("worker {slot} (pid {pid}) ready", slot=handle.slot, pid=pid)
        if not self._announced and all(h.ready for h in self.workers.values()):
            self._announced = True
            log.info(
                "speedproxy {version} serving on {host}:{port} ({count} workers, master pid {pid})",
                version=__version__, host=self._address[0], port=self._address[1],
                count=len(self.workers), pid=os.getpid(),
            )
        for (upstream, backend_id), healthy in self.backend_health.items():
            if not healthy and handle.control is not None:
                handle.control.callRemote(SetBackendState, upstream=upstream, backend_id=backend_id, healthy=False)
        for (upstream, backend_id), load in self.reported_loads.items():
            if handle.control is not None:
                handle.control.callRemote(
                    SetReportedLoad, upstream=upstream, backend_id=backend_id, load=load
                ).addErrback(lambda _: None)

    # -- config ------------------------------------------------------------------

    def reload(self) -> Deferred:
        """SIGHUP: re-read the file; apply it if valid (see :meth:`ConfigRollout.reload`)."""
        return self.rollout.reload()

    def update_config(self, make: Callable[[Config], Config]) -> Deferred:
        """Apply ``make(current config)`` to every worker, one change at a time.

        See :meth:`ConfigRollout.update_config`; fires with the new config
        version.
        """
        return self.rollout.update_config(make)

    def apply_config(self, config: Config) -> Deferred:
        """Apply an already validated config to every worker, all or nothing (see :meth:`ConfigRollout.apply_config`)."""
        return self.rollout.apply_config(config)

    # -- control used by the admin API -------------------------------------------

    def state(self) -> Dict[str, Any]:
        return {
            "config": self.config,
            "index": self.index,
            "workers": [
                {"slot": h.slot, "pid": h.pid, "ready": h.ready, "config_version": h.version}
                for h in sorted(self.workers.values(), key=lambda h: h.slot)
                if h.pid
            ],
            "restarts": self.restarts,
            "config_version": self.config_version,
            "backend_up": dict(self.backend_health),
            "certificate": self.certificate,
        }

    def stats_snapshot(self) -> Dict[str, Any]:
        assert self.reader is not None
        state = self.state()
        return self.reader.snapshot(
            self.config,
            self.index,
            state["workers"],
            {
                "version": __version__,
                "config_version": self.config_version,
                "uptime_seconds": round(time.time() - self.started_at, 3),
                "worker_restarts": self.restarts,
            },
        )

    def metrics_text(self, cache_disk: Optional[Dict[str, Any]] = None) -> bytes:
        """Prometheus text; ``cache_disk``: the disk tier's figures, if known."""
        assert self.reader is not None
        text = render_metrics(SegmentCollector(self.reader, self.state, cache_disk))
        for part in (self.fleet, self.accounting):  # speedproxy.cluster's own figures
            if part is not None:
                text += part.metrics_text()
        return text

    def broadcast(self, command: Any, **arguments: Any) -> Deferred:
        """Send one command to every live worker; fires with their answers."""
        calls = [handle.control.callRemote(command, **arguments) for handle in self.supervisor.connected()]  # type: ignore[union-attr]
        return gatherResults(calls, consumeErrors=True)

    def set_backend_health(self, upstream: str, backend_id: str, healthy: bool) -> Deferred:
        self.backend_health[(upstream, backend_id)] = healthy
        return self.broadcast(SetBackendState, upstream=upstream, backend_id=backend_id, healthy=healthy)

    def disconnect_backend(self, upstream: str, backend_id: str) -> Deferred:
        return self.broadcast(DisconnectBackend, upstream=upstream, backend_id=backend_id)

    def report_load(self, upstream: str, backend_id: str, load: float) -> Deferred:
        """Give every worker a backend's reported load (0..1); kept for new workers."""
        self.reported_loads[(upstream, backend_id)] = load
        return self.broadcast(SetReportedLoad, upstream=upstream, backend_id=backend_id, load=load)

    def forget_backend(self, upstream: str, backend_id: str) -> None:
        """Drop what the master remembers about a removed backend."""
        self.reported_loads.pop((upstream, backend_id), None)

    def inspect_workers(self, active_limit: int = 0, slow_limit: int = 0) -> Deferred:
        """Ask every live worker what it is doing (see ``Inspect``).

        Fires with one report per worker, ordered by slot; a worker that does
        not answer in time is listed with an ``error`` instead.
        """
        handles = sorted(self.supervisor.connected(), key=lambda handle: handle.slot)
        calls = []
        for handle in handles:
            call = handle.control.callRemote(Inspect, active_limit=active_limit, slow_limit=slow_limit)  # type: ignore[union-attr]
            if self.push_timeout:
                call.addTimeout(self.push_timeout, self.reactor)
            calls.append(call)

        def collect(results: List[Tuple[bool, Any]]) -> List[Dict[str, Any]]:
            reports = []
            for handle, (ok, value) in zip(handles, results):
                if ok:
                    report = dict(value["report"])
                    report["ready"] = handle.ready
                else:
                    report = {"slot": handle.slot, "pid": handle.pid, "ready": handle.ready,
                              "serving": False, "error": value.getErrorMessage()}
                reports.append(report)
            return reports

        return DeferredList(calls, consumeErrors=True).addCallback(collect)

    def process_table(self) -> List[Dict[str, Any]]:
        """The master and every live worker: role, slot and pid."""
        rows: List[Dict[str, Any]] = [{"role": "master", "slot": None, "pid": os.getpid()}]
        for handle in sorted(self.workers.values(), key=lambda h: h.slot):
            if handle.pid:
                rows.append({"role": "worker", "slot": handle.slot, "pid": handle.pid})
        return rows

    def reload_ssl(self) -> Deferred:
        """Read the TLS certificate and key files again, on every worker.

        Fires with ``{"reloaded": True, "workers": n, "certificate": {...}}``;
        fails with ``TLSNotEnabled``, ``TLSConfigError`` or
        ``TLSReloadIncomplete`` (see :meth:`TLSReload.reload_ssl`).
        """
        return self.tls_reload.reload_ssl()

    # -- stop ----------------------------------------------------------------------

    def _health_changed(self, upstream: str, backend_id: str, healthy: bool) -> None:
        self.set_backend_health(upstream, backend_id, healthy).addErrback(
            lambda failure: log.error("could not push health of {u}/{b}: {e}", u=upstream, b=backend_id, e=failure.getErrorMessage())
        )

    def stopService(self) -> Deferred:
        """Drain every worker (up to ``shutdown_grace``), then exit."""
        super().stopService()
        if self.health is not None:
            self.health.stop()
        exited = self.supervisor.stop(self.config.server.shutdown_grace)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.admin_port is not None:
            self.admin_port.stopListening()
        if self.admin_site is not None:
            self.admin_site.stop()
        if self.accounting is not None:
            self.accounting.stop()
        if self.fleet is not None:
            self.fleet.stop()

        def cleanup(result: Any) -> Any:
            if self.segment is not None:
                self.segment.close()
            if self._stats_path:
                try:
                    os.unlink(self._stats_path)
                except OSError:
                    pass
                remove_edge_state(edge_state_path(self._stats_path))  # and its semaphores
            log.info("speedproxy master stopped")
            return result

        return exited.addBoth(cleanup)
