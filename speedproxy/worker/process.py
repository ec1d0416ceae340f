"""A worker process: adopts the master's listening socket and serves it.

Run by the master as ``python -m speedproxy.worker --listen-fd 3
--control-fd 4 --slot N --stats PATH``; it does not depend on twistd.  It
waits for its first config over the control channel, then adopts the
listening socket and reports ``Ready``.  It exits when the master says so
(after draining) or when the control channel closes (the master is gone).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from typing import Any, List, Optional, Sequence

from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp

from speedproxy.accesslog import ACCESS_LOG_FD, open_access_log
from speedproxy.admin.tracking import (
    RemovedBackends,
    RequestTracker,
    disconnect_backend,
    inspect_core,
    set_reported_load,
)
from speedproxy.admin.cache_worker import CacheActions
from speedproxy.cache.control import CacheActionError
from speedproxy.config import ConfigError, config_from_mapping
from speedproxy.master.control import (
    ApplyConfig,
    CacheInfo,
    CacheKeys,
    CacheRefused,
    ClearCache,
    ConfigRefused,
    DisconnectBackend,
    DropKeys,
    Inspect,
    Invalidated,
    PurgeCache,
    Ready,
    ReloadTLS,
    SearchCache,
    SetBackendState,
    SetReportedLoad,
    Shutdown,
    TLSRefused,
    WarmCache,
)
from speedproxy.proxy.core import ProxyCore
from speedproxy.proxy.server import ProxyServerFactory
from speedproxy.stats.segment import StatsIndex, StatsSegment
from speedproxy.stats.shared import SharedView
from speedproxy.tls import ServerTLS, TLSConfigError, wrap_listener
from speedproxy.worker.accepting import AcceptBalancer
from speedproxy.worker.draining import drain

log = Logger(namespace="speedproxy.worker")


class WorkerControl(amp.AMP):
    """The worker's end of the control channel."""

    def __init__(self, worker: "Worker") -> None:
        super().__init__()
        self.worker = worker

    @DropKeys.responder
    def drop_keys(self, keys: List[bytes]) -> dict:
        core = self.worker.core
        cache = core.cache if core is not None else None
        if cache is not None:
            for key in keys:
                cache.drop_from_memory(key)
        return {}

    @ApplyConfig.responder
    def apply_config(self, config: Any, version: int, stats_index: Any) -> dict:
        try:
            self.worker.apply(config, version, stats_index)
        except (ConfigError, ValueError, OSError) as error:
            raise ConfigRefused(str(error))
        return {"version": version}

    @Shutdown.responder
    def shutdown(self, grace: float) -> dict:
        self.worker.shutdown(grace)
        return {}

    @SetBackendState.responder
    def set_backend_state(self, upstream: str, backend_id: str, healthy: bool) -> dict:
        self.worker.set_backend_state(upstream, backend_id, healthy)
        return {}

    @DisconnectBackend.responder
    def disconnect_backend(self, upstream: str, backend_id: str) -> dict:
        return {"closed": self.worker.disconnect_backend(upstream, backend_id)}

    @SetReportedLoad.responder
    def set_reported_load(self, upstream: str, backend_id: str, load: float) -> dict:
        return {"found": self.worker.set_reported_load(upstream, backend_id, load)}

    @Inspect.responder
    def inspect(self, active_limit: int, slow_limit: int) -> dict:
        return {"report": self.worker.inspect(active_limit, slow_limit)}

    @ReloadTLS.responder
    def reload_tls(self) -> dict:
        try:
            return {"certificate": self.worker.reload_tls()}
        except TLSConfigError as error:
            raise TLSRefused(str(error))

    # -- the cache (see speedproxy.admin.cache_worker) ---------------------------

    @PurgeCache.responder
    def purge_cache(self, url: Optional[str] = None, prefix: Optional[str] = None) -> dict:
        try:
            return {"purged": self.worker.cache.purge(url=url, prefix=prefix)}
        except CacheActionError as error:
            raise CacheRefused(str(error))

    @ClearCache.responder
    def clear_cache(self, tier: str) -> dict:
        try:
            return {"cleared": self.worker.cache.clear(tier)}
        except CacheActionError as error:
            raise CacheRefused(str(error))

    @CacheInfo.responder
    def cache_info(self) -> dict:
        return {"info": self.worker.cache.info()}

    @CacheKeys.responder
    def cache_keys(self, prefix: str, limit: int) -> dict:
        return {"keys": self.worker.cache.keys(prefix, limit)}

    @SearchCache.responder
    def search_cache(self, text: str, limit: int) -> dict:
        return {"keys": self.worker.cache.search(text, limit)}

    @WarmCache.responder
    def warm_cache(self, url: str) -> Any:
        def refused(failure: Any) -> Any:
            failure.trap(CacheActionError)
            raise CacheRefused(failure.getErrorMessage())

        return self.worker.cache.warm(url).addCallbacks(lambda status: {"status": status}, refused)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.worker.master_lost()


class Worker:
    """The state of one worker process."""

    def __init__(self, reactor: Any, listen_fd: int, family: int, slot: int, stats_path: str) -> None:
        self.reactor = reactor
        self.listen_fd = listen_fd
        self.family = family
        self.slot = slot
        self.segment = StatsSegment.attach(stats_path)
        self.shared = SharedView(self.segment, slot)
        self.core: Optional[ProxyCore] = None
        self.ports: List[Any] = []
        self.control: Optional[WorkerControl] = None
        #: Admin bookkeeping: slow requests and recently removed backends.
        self.tracker: Optional[RequestTracker] = None
        self.removed = RemovedBackends()
        self.version = 0
        self.stopping = False
        self.accept_balancer: Optional[AcceptBalancer] = None
        #: The listener's certificate when ``ssl.enabled``.
        self.tls: Optional[ServerTLS] = None
        #: What the master's cache commands run.
        self.cache = CacheActions(lambda: self.core)

    def connect(self, control_fd: int) -> None:
        """Speak AMP on the inherited control socket."""
        worker = self

        class _ControlFactory(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> WorkerControl:
                worker.control = WorkerControl(worker)
                return worker.control

        self.reactor.adoptStreamConnection(control_fd, socket.AF_UNIX, _ControlFactory())
        os.close(control_fd)

    def apply(self, mapping: Any, version: int, stats_index: Any) -> None:
        """Apply a config pushed by the master (first one: start serving)."""
        config = config_from_mapping(mapping, filename="<master>")
        index = StatsIndex.from_mapping(stats_index)
        ssl = config.ssl
        # Other certificate files: a config whose files cannot be used is refused whole.
        new_certificate = self.tls.certificate_for(ssl) if self.tls is not None else None
        if self.core is None:
            # The certificate first: a first config whose files cannot be used
            # is refused before anything starts (the master then restarts us).
            tls = ServerTLS.from_files(ssl.cert_file, ssl.key_file) if ssl.enabled else None
            pipe = access_log_pipe()
            self.core = ProxyCore(
                self.reactor,
                config,
                open_access_log(config.server.access_log, pipe),
                shared=self.shared,
                stats_index=index,
            )
            self.core.open_access_log = lambda setting: open_access_log(setting, pipe)
            self.core.announce_invalidation = self._announce_invalidation
            self.core.start()
            from speedproxy.cluster.ledger import report_rows

            # Traffic accounting counts go to the master (a no-op while none is counted).
            self.accounting_reports = report_rows(self.core, self._report_accounting, self.reactor)
            self.tracker = RequestTracker(self.core)
            scheme = b"https" if config.ssl.enabled else b"http"
            factory: Any = ProxyServerFactory(self.core, scheme)
            if tls is not None:
                self.tls = tls
                factory = wrap_listener(tls, factory)
            port = self.reactor.adoptStreamPort(self.listen_fd, self.family, factory)
            core = self.core
            self.accept_balancer = AcceptBalancer(
                port,
                self.reactor,
                mine=lambda: len(core.clients),
                total=self.shared.active_clients,
                workers=self.shared.live_workers,
            )
            self.accept_balancer.install()
            self.ports.append(port)
            os.close(self.listen_fd)
            self.version = version
            self.reactor.callLater(0, self._ready)
        else:
            self.removed.before_apply(self.core, config)
            self.core.apply_config(config, index)
            if new_certificate is not None and self.tls is not None:
                self.tls.current = new_certificate
            self.version = version

    def _report_accounting(self, rows: bytes, dropped: int) -> None:
        """Traffic accounting rows of this worker: the master batches and flushes them."""
        from speedproxy.cluster.amp import AccountingRows

        if self.control is not None:
            self.control.callRemote(AccountingRows, rows=rows, dropped=dropped)

    def _announce_invalidation(self, keys: List[bytes]) -> None:
        """Cache keys this worker invalidated: the master tells the other workers."""
        if self.control is not None:
            self.control.callRemote(Invalidated, keys=list(keys))

    def _ready(self) -> None:
        if self.control is not None:
            self.control.callRemote(Ready, pid=os.getpid(), slot=self.slot, version=self.version)
        log.info("worker {slot} (pid {pid}) serving, config version {version}",
                 slot=self.slot, pid=os.getpid(), version=self.version)

    def set_backend_state(self, upstream: str, backend_id: str, healthy: bool) -> None:
        if self.core is None:
            return
        self.core.set_backend_health(upstream, backend_id, healthy)

    def disconnect_backend(self, upstream: str, backend_id: str) -> int:
        return disconnect_backend(self.core, self.removed, upstream, backend_id)

    def set_reported_load(self, upstream: str, backend_id: str, load: float) -> bool:
        return set_reported_load(self.core, upstream, backend_id, load)

    def inspect(self, active_limit: int, slow_limit: int) -> dict:
        return inspect_core(
            self.core,
            self.tracker,
            slot=self.slot,
            version=self.version,
            active_limit=active_limit,
            slow_limit=slow_limit,
        )

    def reload_tls(self) -> dict:
        """Read the certificate files again; new handshakes get what they hold now."""
        if self.core is None:
            return {"pending": "not serving yet: reads the files when its config arrives"}
        if self.tls is None:
            raise TLSConfigError("this worker serves without TLS (ssl.enabled was false when it started)")
        ssl = self.core.config.ssl
        return self.tls.reload(ssl.cert_file, ssl.key_file).summary()

    def shutdown(self, grace: float) -> None:
        """Drain, then exit 0."""
        if self.stopping:
            return
        self.stopping = True
        if self.core is None:
            self.reactor.stop()
            return
        if self.accept_balancer is not None:
            self.accept_balancer.stop()
        ports, self.ports = self.ports, []
        done = drain(self.reactor, self.core, ports, grace)
        done.addBoth(lambda _: self.reactor.stop())

    def master_lost(self) -> None:
        """The control channel closed: the master is gone, so are we."""
        if not self.stopping:
            log.warn("master went away; worker {slot} exits", slot=self.slot)
            self.stopping = True
            if self.reactor.running:
                self.reactor.stop()


def access_log_pipe() -> Optional[int]:
    """The pipe to the master's twistd log, when the master gave us one."""
    try:
        os.fstat(ACCESS_LOG_FD)
    except OSError:
        return None
    return ACCESS_LOG_FD


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m speedproxy.worker``."""
    parser = argparse.ArgumentParser(prog="speedproxy-worker")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--family", choices=("inet", "inet6"), default="inet")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--stats", required=True)
    args = parser.parse_args(argv)

    try:
        from twisted.internet import epollreactor

        epollreactor.install()
    except Exception:  # not Linux, or a reactor is already installed
        pass
    from speedproxy.worker.reactor import install_lean_dispatch, install_lean_reactor

    install_lean_dispatch()
    from twisted.internet import reactor
    from twisted.logger import formatEvent, globalLogBeginner

    install_lean_reactor(reactor)

    # The master timestamps the lines it relays; print just level, system and text.
    def observer(event: Any) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        level = event.get("log_level")
        sys.stdout.write(
            "[%s#%s] %s\n" % (event.get("log_namespace", "-"), level.name if level else "-", text)
        )
        sys.stdout.flush()

    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    # Ctrl-C reaches the whole process group; the master coordinates the stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    family = socket.AF_INET6 if args.family == "inet6" else socket.AF_INET
    worker = Worker(reactor, args.listen_fd, family, args.slot, args.stats)
    worker.connect(args.control_fd)

    def on_term(*_: Any) -> None:
        grace = worker.core.server.shutdown_grace if worker.core is not None else 0.0
        reactor.callFromThread(worker.shutdown, grace)

    def on_usr1(*_: Any) -> None:
        if worker.core is not None:
            reactor.callFromThread(worker.core.reopen_access_log)

    reactor.callWhenRunning(lambda: signal.signal(signal.SIGTERM, on_term))
    signal.signal(signal.SIGUSR1, on_usr1)
    reactor.run(installSignalHandlers=False)
    return 0
