"""The service that runs one worker's data path on a reactor.

It does not depend on twistd: give it a reactor, a config and either an
address to bind or listening sockets inherited from a master.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from speedproxy import __version__
from speedproxy.accesslog import open_access_log
from speedproxy.config.model import Config
from speedproxy.master.listeners import ADMIN_KEY, PROXY_KEY, Listener, bind_all, parse_listen
from speedproxy.proxy.core import ProxyCore
from speedproxy.proxy.server import ProxyServerFactory
from speedproxy.tls import (
    ServerTLS,
    TLSConfigError,
    TLSNotEnabled,
    reload_refusal,
    wrap_listener,
)
from speedproxy.worker.draining import drain

log = Logger(namespace="speedproxy.worker")


class ProxyWorkerService(Service):
    """Serves the proxy for one config on the given reactor."""

    name = "speedproxy-worker"
    #: What the admin API reports as the process model.
    mode = "single-process"

    def __init__(
        self,
        reactor: Any,
        config: Config,
        *,
        listener: Optional[Listener] = None,
        admin_listener: Optional[Listener] = None,
    ) -> None:
        """``listener`` (proxy) and ``admin_listener``: already bound and
        listening (``twistd speedproxy`` binds every listener before starting
        anything); without them both are bound when the service starts."""
        self.reactor = reactor
        self.config = config
        self.config_version = 1
        self.config_path: Optional[str] = config.source
        self.started_at = time.time()
        self.core: Optional[ProxyCore] = None
        self.ports: List[Any] = []
        self.admin_port: Any = None
        self.admin_site: Any = None
        self.tracker: Any = None
        self.removed: Any = None
        #: The listener's certificate when ``ssl.enabled``.
        self.tls: Optional[ServerTLS] = None
        self._listener = listener
        self._admin_listener = admin_listener
        from speedproxy.admin.cache_worker import CacheActions, LocalCacheFanout

        #: The admin API's way to this process's cache.
        self.cache_fanout = LocalCacheFanout(CacheActions(lambda: self.core))

    @property
    def tls_listener(self) -> bool:
        """Whether the listener serves TLS (``ssl.enabled`` when it started)."""
        return self.tls is not None

    def privilegedStartService(self) -> None:
        from speedproxy.admin.auth import refuse_insecure_admin

        refuse_insecure_admin(self.config)
        if self._listener is None or self._admin_listener is None:
            self._bind()
        super().privilegedStartService()

    def _bind(self) -> None:
        """Bind the listeners not given, all or none (:class:`ListenError`)."""
        server = self.config.server
        wanted = []
        if self._listener is None:
            wanted.append((PROXY_KEY, server.host, server.port))
        if self._admin_listener is None:
            wanted.append((ADMIN_KEY, *parse_listen(self.config.admin.listen)))
        bound = iter(bind_all(wanted))
        if self._listener is None:
            self._listener = next(bound)
        if self._admin_listener is None:
            self._admin_listener = next(bound)

    def _adopt(self, listener: Listener, factory: Any) -> Any:
        """Serve ``factory`` on a bound socket; the socket object is closed."""
        try:
            return self.reactor.adoptStreamPort(listener.sock.fileno(), listener.sock.family, factory)
        finally:
            listener.close()  # the port holds its own copy of the descriptor

    def startService(self) -> None:
        super().startService()
        from speedproxy.worker.reactor import install_lean_dispatch, install_lean_reactor

        if self._listener is None or self._admin_listener is None:
            self._bind()
        install_lean_dispatch()
        install_lean_reactor(self.reactor)
        from speedproxy.admin.tracking import RemovedBackends, RequestTracker

        config = self.config
        self.core = ProxyCore(self.reactor, config, open_access_log(config.server.access_log))
        self.core.start()
        from speedproxy.health.http import HTTPHealthChecker
        from speedproxy.health.monitor import HealthMonitor

        core = self.core
        self.health = HealthMonitor(
            self.reactor, HTTPHealthChecker(self.reactor), core.set_backend_health
        )
        self.health.update(config.backends)
        self.tracker = RequestTracker(self.core)
        self.removed = RemovedBackends()
        factory: Any = ProxyServerFactory(self.core, b"https" if config.ssl.enabled else b"http")
        if config.ssl.enabled:
            self.tls = ServerTLS.from_files(config.ssl.cert_file, config.ssl.key_file)
            factory = wrap_listener(self.tls, factory)
        listener, self._listener = self._listener, None
        admin_listener, self._admin_listener = self._admin_listener, None
        assert listener is not None and admin_listener is not None
        port = self._adopt(listener, factory)
        self.ports.append(port)
        from speedproxy.admin.site import admin_site

        self.admin_site = admin_site(self)
        self.admin_port = self._adopt(admin_listener, self.admin_site)
        self._start_cluster()
        address = port.getHost()
        log.info(
            "speedproxy {version} serving on {host}:{port} ({routes} routes, {groups} upstream groups)",
            version=__version__,
            host=address.host,
            port=address.port,
            routes=len(config.routing),
            groups=len(config.backends),
        )

    def _start_cluster(self) -> None:
        """The fleet (``cluster.redis``) and traffic accounting, as the master runs them."""
        from speedproxy.cluster.accounting import start_accounting
        from speedproxy.cluster.ledger import report_rows
        from speedproxy.cluster.node import start_fleet

        self.fleet = start_fleet(self)
        self.accounting = start_accounting(self)
        if self.accounting is not None:  # the one process counts and flushes itself
            self._accounting_reports = report_rows(self.core, self.accounting.add_json, self.reactor)

    # The same control surface as the master, for the admin site.

    def state(self) -> dict:
        assert self.core is not None
        return {
            "config": self.config,
            "index": self.core.stats_index,
            "workers": [{"slot": 0, "pid": os.getpid(), "ready": True, "config_version": self.config_version}],
            "restarts": 0,
            "config_version": self.config_version,
            "backend_up": {},
            "certificate": self.tls.current if self.tls is not None else None,
        }

    def stats_snapshot(self) -> dict:
        from speedproxy.stats.reader import StatsReader

        assert self.core is not None
        state = self.state()
        return StatsReader(self.core.shared.segment).snapshot(
            self.config,
            self.core.stats_index,  # type: ignore[arg-type]
            state["workers"],
            {
                "version": __version__,
                "config_version": self.config_version,
                "uptime_seconds": round(time.time() - self.started_at, 3),
                "worker_restarts": 0,
            },
        )

    def metrics_text(self, cache_disk: Optional[Dict[str, Any]] = None) -> bytes:
        from speedproxy.stats.prometheus import SegmentCollector, render_metrics
        from speedproxy.stats.reader import StatsReader

        assert self.core is not None
        text = render_metrics(SegmentCollector(StatsReader(self.core.shared.segment), self.state, cache_disk))
        for part in (getattr(self, "fleet", None), getattr(self, "accounting", None)):  # speedproxy.cluster's
            if part is not None:
                text += part.metrics_text()
        return text

    def apply_config(self, config: Config) -> None:
        """Apply a new config to the running data path (listener unchanged).

        :raises TLSConfigError: the config names other certificate files and
            they cannot be used; nothing was applied.
        """
        new_certificate = self.tls.certificate_for(config.ssl) if self.tls is not None else None
        if self.core is not None:
            if self.removed is not None:
                self.removed.before_apply(self.core, config)
            self.core.apply_config(config)
        if getattr(self, "health", None) is not None:
            self.health.update(config.backends)
        if new_certificate is not None and self.tls is not None:
            self.tls.current = new_certificate
        self.config = config
        self.config_version += 1

    # The rest of the admin API's control surface (see speedproxy.admin.context).

    def update_config(self, make: Callable[[Config], Config]) -> Deferred:
        """Apply ``make(current config)`` now; fires with the new version."""
        try:
            self.apply_config(make(self.config))
        except Exception:
            return fail()
        return succeed(self.config_version)

    def disconnect_backend(self, upstream: str, backend_id: str) -> Deferred:
        from speedproxy.admin.tracking import disconnect_backend

        return succeed([{"closed": disconnect_backend(self.core, self.removed, upstream, backend_id)}])

    def report_load(self, upstream: str, backend_id: str, load: float) -> Deferred:
        from speedproxy.admin.tracking import set_reported_load

        return succeed([{"found": set_reported_load(self.core, upstream, backend_id, load)}])

    def inspect_workers(self, active_limit: int = 0, slow_limit: int = 0) -> Deferred:
        from speedproxy.admin.tracking import inspect_core

        report = inspect_core(
            self.core,
            self.tracker,
            slot=0,
            version=self.config_version,
            active_limit=active_limit,
            slow_limit=slow_limit,
        )
        report["ready"] = self.core is not None
        return succeed([report])

    def process_table(self) -> List[Dict[str, Any]]:
        return [{"role": "single-process", "slot": 0, "pid": os.getpid()}]

    def reload_ssl(self) -> Deferred:
        """Read the certificate and key files again (see the master's ``reload_ssl``)."""
        ssl = self.config.ssl
        refusal = reload_refusal(self.tls is not None, ssl.enabled)
        if refusal is not None or self.tls is None:
            return fail(TLSNotEnabled(refusal))
        try:
            loaded = self.tls.reload(ssl.cert_file, ssl.key_file)
        except TLSConfigError:
            return fail()
        return succeed({"reloaded": True, "workers": 1, "certificate": loaded.summary()})

    def stopService(self) -> Deferred:
        """Stop accepting, let in-flight requests finish within the grace period."""
        super().stopService()
        ports, self.ports = self.ports, []
        if getattr(self, "health", None) is not None:
            self.health.stop()
        if self.admin_port is not None:
            self.admin_port.stopListening()
        if self.admin_site is not None:
            self.admin_site.stop()
        for part in (getattr(self, "accounting", None), getattr(self, "fleet", None)):
            if part is not None:
                part.stop()
        if self.core is None:
            return succeed(None)
        return drain(self.reactor, self.core, ports, self.config.server.shutdown_grace)
