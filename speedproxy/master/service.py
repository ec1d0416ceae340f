"""The master: binds listeners, runs workers, serves the admin API.

The master never serves proxy traffic.  It owns the config (file, SIGHUP,
admin API), the stats segment's name→index map and the worker processes;
it talks to each worker over AMP (:mod:`speedproxy.master.control`).
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, DeferredList, DeferredLock, fail, gatherResults, succeed
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from speedproxy import __version__
from speedproxy.config import Config, ConfigError, config_to_mapping
from speedproxy.config.model import restart_required
from speedproxy.master.control import (
    ApplyConfig,
    DisconnectBackend,
    DropKeys,
    Inspect,
    Invalidated,
    Ready,
    ReloadTLS,
    SetBackendState,
    SetReportedLoad,
    Shutdown,
)
from speedproxy.master.cache_fanout import MasterCacheFanout
from speedproxy.cluster.amp import AccountingRows
from speedproxy.master.affinity import pinner
from speedproxy.master.environment import last_level_cache, worker_environment
from speedproxy.accesslog import ACCESS_LOG_FD
from speedproxy.master.listeners import ADMIN_KEY, PROXY_KEY, Listener, bind_all, parse_listen
from speedproxy.stats.prometheus import SegmentCollector, render_metrics
from speedproxy.stats.reader import StatsReader
from speedproxy.stats.segment import StatsIndex, StatsSegment, backend_keys, layout_for
from speedproxy.tls import (
    LoadedCertificate,
    TLSConfigError,
    TLSNotEnabled,
    TLSReloadIncomplete,
    config_for_reload,
    load_certificate,
    log_certificate,
    reload_refusal,
)

log = Logger(namespace="speedproxy.master")
#: Lines the workers print, relayed into the master's log.
worker_log = Logger(namespace="speedproxy.worker")
access_log = Logger(namespace="speedproxy.access")

#: A worker that lived at least this long resets the respawn backoff.
STABLE_AFTER = 10.0
MAX_BACKOFF = 10.0
#: A worker that has not answered a config push (or an inspection) within
#: this many seconds is treated as having refused it.
PUSH_TIMEOUT = 10.0


def worker_count(config: Config) -> int:
    """``server.workers``, with ``auto`` meaning one per CPU."""
    if config.server.workers is None:
        return os.cpu_count() or 1
    return config.server.workers


class MasterControl(amp.AMP):
    """The master's end of one worker's control channel."""

    def __init__(self, master: "MasterService", handle: "WorkerHandle") -> None:
        super().__init__()
        self.master = master
        self.handle = handle

    def connectionMade(self) -> None:
        super().connectionMade()
        self.master.worker_connected(self.handle, self)

    @Ready.responder
    def ready(self, pid: int, slot: int, version: int) -> dict:
        self.master.worker_ready(self.handle, pid, version)
        return {}

    @AccountingRows.responder
    def accounting_rows(self, rows: bytes, dropped: int) -> dict:
        """A worker's traffic accounting counts (kept when accounting is on)."""
        if self.master.accounting is not None:
            self.master.accounting.add_json(rows, dropped)
        return {}

    @Invalidated.responder
    def invalidated(self, keys: List[bytes]) -> dict:
        """One worker invalidated keys: every worker drops them from memory."""
        for handle in self.master.workers.values():
            if handle.control is not None:
                handle.control.callRemote(DropKeys, keys=keys)
        return {}


class WorkerProcess(ProcessProtocol):
    """Relays a worker's output to the master's log and reports its exit."""

    def __init__(self, master: "MasterService", handle: "WorkerHandle") -> None:
        self.master = master
        self.handle = handle
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == ACCESS_LOG_FD:
            self._access_lines(data)
            return
        text = self._partial.get(fd, b"") + data  # (stdout/stderr)
        *lines, self._partial[fd] = text.split(b"\n")
        for line in lines:
            if line:
                worker_log.info(
                    "[worker {slot}] {line}", slot=self.handle.slot, line=line.decode("utf-8", "replace")
                )

    def _access_lines(self, data: bytes) -> None:
        """A worker's access log batch: one event for the whole batch."""
        text = self._partial.get(ACCESS_LOG_FD, b"") + data
        cut = text.rfind(b"\n")
        self._partial[ACCESS_LOG_FD] = text[cut + 1 :]
        if cut >= 0:
            access_log.info("{lines}", lines=text[:cut].decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        self.master.worker_exited(self.handle, reason)


@dataclass(eq=False)
class WorkerHandle:
    """The master's record of one worker slot."""

    slot: int
    pid: int = 0
    process: Any = None
    control: Optional[MasterControl] = None
    ready: bool = False
    started: float = 0.0
    version: int = 0
    #: Consecutive quick exits, for the respawn backoff.
    quick_exits: int = 0
    retiring: bool = False
    exited: Deferred = field(default_factory=Deferred)
    respawn_call: Any = None


class MasterService(Service):
    """Runs ``server.workers`` worker processes behind shared listeners."""

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
        self.workers: Dict[int, WorkerHandle] = {}
        self.restarts = 0
        self.stopping = False
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
        #: Serialises config changes (SIGHUP, admin API): each one is computed
        #: from the config the previous one left live.
        self._config_lock = DeferredLock()
        #: Loads reported through ``/api/v1/report``, re-sent to new workers.
        self.reported_loads: Dict[Tuple[str, str], float] = {}
        self.admin_site: Any = None
        self.push_timeout = PUSH_TIMEOUT
        #: Whether the listener serves TLS: ``ssl.enabled`` at start (a
        #: change needs a restart, so workers are always told this one).
        self.tls_listener = config.ssl.enabled
        #: The certificate new TLS handshakes get (``None`` without TLS).
        self.certificate: Optional[LoadedCertificate] = None
        self._pypy = platform.python_implementation() == "PyPy"
        self._cache_bytes = last_level_cache() if self._pypy else None
        #: The admin API's way to the workers' caches.
        self.cache_fanout = MasterCacheFanout(self)
        #: This node's place in the fleet (``cluster.redis``; ``None``: alone).
        self.fleet: Any = None
        #: Traffic accounting (``accounting``; ``None``: off).
        self.accounting: Any = None

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
        nursery = worker_environment(os.environ, self._pypy, self._cache_bytes).get("PYPY_GC_NURSERY")
        if nursery and nursery != os.environ.get("PYPY_GC_NURSERY"):
            log.info(
                "PyPy workers get PYPY_GC_NURSERY={nursery}: the CPU reports {cache} MiB of last-level "
                "cache, and half of it per worker would be mostly idle nursery (set PYPY_GC_NURSERY to choose)",
                nursery=nursery, cache=(self._cache_bytes or 0) // 2**20,
            )
        for slot in range(count):
            self._spawn(WorkerHandle(slot))
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
        for handle in self.workers.values():
            if handle.pid:
                try:
                    os.kill(handle.pid, signal.SIGUSR1)
                except OSError:
                    pass

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        if self.stopping:
            # Second signal: no more waiting.
            for handle in self.workers.values():
                if handle.pid:
                    try:
                        os.kill(handle.pid, signal.SIGKILL)
                    except OSError:
                        pass
            os._exit(1)
        self.reactor.callFromThread(self.reactor.stop)

    # -- workers ---------------------------------------------------------------

    def _spawn(self, handle: WorkerHandle) -> None:
        assert self.listener is not None and self.segment is not None
        self.workers[handle.slot] = handle
        handle.ready = False
        handle.control = None
        handle.exited = Deferred()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [
            sys.executable, "-m", "speedproxy.worker",
            "--listen-fd", "3", "--family", self.family,
            "--control-fd", "4", "--slot", str(handle.slot), "--stats", self._stats_path,
        ]
        try:
            process = self.reactor.spawnProcess(
                WorkerProcess(self, handle),
                sys.executable,
                argv,
                env=worker_environment(os.environ, self._pypy, self._cache_bytes),
                childFDs={
                    0: "w", 1: "r", 2: "r", 3: self.listener.fileno(), 4: child.fileno(), ACCESS_LOG_FD: "r"
                },
            )
        finally:
            child.close()
        handle.process = process
        handle.pid = process.pid
        pinner.pin(handle.slot, process.pid, self.config.server.cpu_affinity)  # server.cpu_affinity
        handle.started = self.reactor.seconds()
        self.segment.reset_slot(handle.slot, process.pid, int(time.time()))

        master = self

        class _Factory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> MasterControl:
                return MasterControl(master, handle)

        self.reactor.adoptStreamConnection(parent.fileno(), socket.AF_UNIX, _Factory())
        parent.close()

    def worker_connected(self, handle: WorkerHandle, control: MasterControl) -> None:
        handle.control = control

        def refused(failure: Failure) -> None:
            log.error("worker {slot} refused the config: {error}", slot=handle.slot, error=failure.getErrorMessage())
            if not handle.ready and handle.control is control:
                # It cannot start (certificate files being replaced, say): stop
                # it, so it is respawned with backoff and reads everything again.
                control.callRemote(Shutdown, grace=0.0)

        self._push_config(handle, self.config, self.config_version).addErrback(refused)

    def worker_ready(self, handle: WorkerHandle, pid: int, version: int) -> None:
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

    def worker_exited(self, handle: WorkerHandle, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        handle.ready = False
        handle.control = None
        if self.reader is not None:
            self.reader.retire(handle.slot)
        exited, handle.exited = handle.exited, Deferred()
        if self.stopping or handle.retiring:
            self.workers.pop(handle.slot, None)
            log.info("worker {slot} (pid {pid}) exited", slot=handle.slot, pid=handle.pid)
            handle.pid = 0
            exited.callback(None)
            return
        lived = self.reactor.seconds() - handle.started
        handle.quick_exits = 0 if lived >= STABLE_AFTER else handle.quick_exits + 1
        delay = 0.0 if handle.quick_exits <= 1 else min(MAX_BACKOFF, 0.1 * 2 ** (handle.quick_exits - 1))
        log.warn(
            "worker {slot} (pid {pid}) died (exit {code}, signal {sig}); respawning in {delay:.1f}s",
            slot=handle.slot, pid=handle.pid, code=code, sig=sig, delay=delay,
        )
        handle.pid = 0
        self.restarts += 1
        exited.callback(None)

        def respawn() -> None:
            handle.respawn_call = None
            if not self.stopping and not handle.retiring:
                self._spawn(handle)

        handle.respawn_call = self.reactor.callLater(delay, respawn)

    # -- config ------------------------------------------------------------------

    def _push_config(self, handle: WorkerHandle, config: Config, version: int) -> Deferred:
        if handle.control is None:
            return succeed(None)
        if config.ssl.enabled != self.tls_listener:
            # Not before a restart: a respawned worker must not change the
            # listener's TLS mode under the others.
            config = replace(config, ssl=replace(config.ssl, enabled=self.tls_listener))
        pushed = handle.control.callRemote(
            ApplyConfig,
            config=config_to_mapping(config),
            version=version,
            stats_index=self.index.to_mapping(),
        )
        if self.push_timeout:
            pushed.addTimeout(self.push_timeout, self.reactor)
        return pushed

    def reload(self) -> Deferred:
        """SIGHUP: re-read the file; apply it if valid, else keep running as is.

        As with nginx, the TLS certificate files are read again too (a
        renewed certificate at the same path is picked up).
        """
        if self.config_path is None:
            return succeed(None)
        try:
            config = config_for_reload(self.config_path, self.tls_listener)
        except (ConfigError, TLSConfigError) as error:
            log.error("config reload refused, keeping the running config:\n{error}", error=str(error))
            return succeed(None)

        def applied(version: int) -> Any:
            log.info("config version {version} from {path} is live", version=version, path=self.config_path)
            if reload_refusal(self.tls_listener, self.config.ssl.enabled) is None:
                return self.reload_ssl().addCallback(log_certificate)
            return None

        return self.update_config(lambda current: config).addCallback(applied).addErrback(
            lambda failure: log.error("config reload failed: {error}", error=failure.getErrorMessage()),
        )

    def update_config(self, make: Callable[[Config], Config]) -> Deferred:
        """Apply ``make(current config)`` to every worker, one change at a time.

        ``make`` runs once every earlier change has finished, so changes
        computed from the current config (the admin API's backend calls)
        never overwrite each other; it may raise to refuse the change.
        Fires with the new config version (see :meth:`apply_config`).
        """
        def change() -> Deferred:
            config = make(self.config)
            ssl = config.ssl
            loaded = None
            if ssl.enabled and (ssl.cert_file, ssl.key_file) != (self.config.ssl.cert_file, self.config.ssl.key_file):
                loaded = load_certificate(ssl.cert_file, ssl.key_file)  # other files: refused here if unusable
            applied = self.apply_config(config)
            if loaded is not None and self.tls_listener:
                applied.addCallback(self._serving, loaded)
            return applied

        return self._config_lock.run(change)

    def _serving(self, result: Any, certificate: LoadedCertificate) -> Any:
        """Every worker now gives new handshakes ``certificate``."""
        self.certificate = certificate
        return result

    def apply_config(self, config: Config) -> Deferred:
        """Validate-free apply of an already validated config to every worker.

        Fires with the new version once every live worker applied it; if one
        refuses, the others are put back on the previous config and the
        Deferred fails.
        """
        old = self.config
        fixed = restart_required(old, config)
        if fixed:
            log.warn("{keys} changed: takes effect only after a restart", keys=", ".join(fixed))
        index = StatsIndex.from_mapping(self.index.to_mapping())
        try:
            index.assign_config(config, self.segment.layout if self.segment else None)
        except ValueError as error:
            return fail(error)
        # Kept even if the change is refused: workers that took it may have
        # counted requests under the new names, and an index is never reused.
        self.index = index
        version = self.config_version + 1
        live = [handle for handle in self.workers.values() if handle.control is not None and not handle.retiring]
        pushes = [self._push_config(handle, config, version) for handle in live]

        def applied(results: List[Tuple[bool, Any]]) -> Any:
            # A worker that died meanwhile is respawned with whatever config
            # is live by then: its lost channel is no refusal.
            failures = [
                (handle, value)
                for handle, (ok, value) in zip(live, results)
                if not ok and not value.check(net_error.ConnectionDone, net_error.ConnectionLost)
            ]
            if failures:
                for handle, (ok, value) in zip(live, results):
                    # Put back every worker that took the change or may still
                    # take it late (no answer in time).
                    if ok or value.check(defer.TimeoutError, defer.CancelledError):
                        self._push_config(handle, old, self.config_version).addErrback(lambda _: None)
                raise RuntimeError(
                    "; ".join(
                        "worker %d: %s" % (handle.slot, value.getErrorMessage()) for handle, value in failures
                    )
                )
            self.config = config
            self.config_version = version
            for handle in live:
                handle.version = version
            # Workers that connected while this change was in flight were
            # given the previous config: bring them up to date.
            for handle in list(self.workers.values()):
                if handle not in live and handle.control is not None and not handle.retiring:
                    self._push_config(handle, config, version).addErrback(
                        lambda failure, slot=handle.slot: log.error(
                            "worker {slot} refused the config: {error}", slot=slot, error=failure.getErrorMessage()
                        )
                    )
            self._resize(worker_count(config))
            if config.server.cpu_affinity != old.server.cpu_affinity:
                pinner.repin([(h.slot, h.pid) for h in self.workers.values()], config.server.cpu_affinity)
            if self.health is not None:
                self.health.update(config.backends)
            return version

        return DeferredList(pushes, consumeErrors=True).addCallback(applied)

    def _resize(self, count: int) -> None:
        """Start or retire workers to reach ``count``."""
        assert self.segment is not None
        count = min(count, self.segment.layout.slots)
        active = sorted(slot for slot, handle in self.workers.items() if not handle.retiring)
        for slot in range(count):
            if slot not in self.workers:
                self._spawn(WorkerHandle(slot))
        for slot in active:
            if slot >= count:
                handle = self.workers[slot]
                handle.retiring = True
                if handle.respawn_call is not None and handle.respawn_call.active():
                    handle.respawn_call.cancel()
                    self.workers.pop(slot, None)
                elif handle.control is not None:
                    handle.control.callRemote(Shutdown, grace=self.config.server.shutdown_grace)
                elif handle.pid:
                    os.kill(handle.pid, signal.SIGTERM)

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
        calls = [
            handle.control.callRemote(command, **arguments)
            for handle in self.workers.values()
            if handle.control is not None
        ]
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
        handles = sorted(
            (handle for handle in self.workers.values() if handle.control is not None),
            key=lambda handle: handle.slot,
        )
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

        The files are checked here first, so files that cannot be used
        change nothing.  Fires with ``{"reloaded": True, "workers": n,
        "certificate": {...}}`` once every live worker gives new handshakes
        the files' certificate (open connections keep theirs); fails with
        :class:`TLSNotEnabled`, :class:`TLSConfigError` (names the file) or
        :class:`TLSReloadIncomplete` (names the workers that did not take it).
        """
        return self._config_lock.run(self._reload_ssl)

    def _reload_ssl(self) -> Deferred:
        ssl = self.config.ssl
        refusal = reload_refusal(self.tls_listener, ssl.enabled)
        if refusal is not None:
            return fail(TLSNotEnabled(refusal))
        try:
            loaded = load_certificate(ssl.cert_file, ssl.key_file)
        except TLSConfigError:
            return fail()
        live = [handle for handle in self.workers.values() if handle.control is not None and not handle.retiring]
        calls = []
        for handle in live:
            call = handle.control.callRemote(ReloadTLS)  # type: ignore[union-attr]
            if self.push_timeout:
                call.addTimeout(self.push_timeout, self.reactor)
            calls.append(call)

        def collect(results: List[Tuple[bool, Any]]) -> Dict[str, Any]:
            reloaded: List[int] = []
            # Starting (or restarting) workers read the files when they start.
            starting: List[int] = []
            problems: List[str] = []
            for handle, (ok, value) in zip(live, results):
                if not ok:
                    if value.check(net_error.ConnectionDone, net_error.ConnectionLost):
                        starting.append(handle.slot)
                    else:
                        problems.append("worker %d: %s" % (handle.slot, value.getErrorMessage()))
                    continue
                certificate = value["certificate"]
                if "pending" in certificate:
                    starting.append(handle.slot)
                elif certificate.get("sha256") != loaded.sha256:
                    problems.append(
                        "worker %d loaded %s, not %s (were the files replaced during the reload?)"
                        % (handle.slot, certificate.get("sha256"), loaded.sha256)
                    )
                else:
                    reloaded.append(handle.slot)
            if problems:
                raise TLSReloadIncomplete(
                    "certificate reloaded on %d of %d workers; %s" % (len(reloaded), len(live), "; ".join(problems))
                )
            self.certificate = loaded
            result: Dict[str, Any] = {"reloaded": True, "workers": len(reloaded), "certificate": loaded.summary()}
            if starting:
                result["starting"] = sorted(starting)
            return result

        return DeferredList(calls, consumeErrors=True).addCallback(collect)

    # -- stop ----------------------------------------------------------------------

    def _health_changed(self, upstream: str, backend_id: str, healthy: bool) -> None:
        self.set_backend_health(upstream, backend_id, healthy).addErrback(
            lambda failure: log.error("could not push health of {u}/{b}: {e}", u=upstream, b=backend_id, e=failure.getErrorMessage())
        )

    def stopService(self) -> Deferred:
        """Drain every worker (up to ``shutdown_grace``), then exit."""
        super().stopService()
        self.stopping = True
        if self.health is not None:
            self.health.stop()
        grace = self.config.server.shutdown_grace
        waits = []
        for handle in list(self.workers.values()):
            if handle.respawn_call is not None and handle.respawn_call.active():
                handle.respawn_call.cancel()
            if not handle.pid:
                continue
            waits.append(handle.exited)
            if handle.control is not None:
                handle.control.callRemote(Shutdown, grace=grace)
            else:
                try:
                    os.kill(handle.pid, signal.SIGTERM)
                except OSError:
                    pass
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

        def kill_stragglers() -> None:
            for handle in self.workers.values():
                if handle.pid:
                    log.warn("worker {slot} did not stop in time; killing it", slot=handle.slot)
                    try:
                        os.kill(handle.pid, signal.SIGKILL)
                    except OSError:
                        pass

        timer = self.reactor.callLater(grace + 5.0, kill_stragglers)

        def cleanup(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if self.segment is not None:
                self.segment.close()
            for path in (self._stats_path, self._stats_path + ".edge"):  # .edge: speedproxy.edge.host_table
                try:
                    os.unlink(path)
                except OSError:
                    pass
            log.info("speedproxy master stopped")
            return result

        return DeferredList(waits).addBoth(cleanup)
