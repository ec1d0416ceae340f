"""The service that runs one worker's data path on a reactor.

It does not depend on twistd: give it a reactor, a config and either an
address to bind or listening sockets inherited from a master.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from speedproxy import __version__
from speedproxy.accesslog import open_access_log
from speedproxy.config.model import Config
from speedproxy.proxy.core import ProxyCore
from speedproxy.proxy.server import ProxyServerFactory
from speedproxy.worker.draining import drain

log = Logger(namespace="speedproxy.worker")


def _tls_server_options(config: Config) -> Any:
    """Certificate options for the client-facing listener."""
    from speedproxy.tls import server_tls_options

    return server_tls_options(config.ssl.cert_file, config.ssl.key_file)


class ProxyWorkerService(Service):
    """Serves the proxy for one config on the given reactor."""

    name = "speedproxy-worker"

    def __init__(self, reactor: Any, config: Config) -> None:
        self.reactor = reactor
        self.config = config
        self.core: Optional[ProxyCore] = None
        self.ports: List[Any] = []
        self.admin_port: Any = None

    def startService(self) -> None:
        super().startService()
        config = self.config
        self.core = ProxyCore(self.reactor, config, open_access_log(config.server.access_log))
        self.core.start()
        server = config.server
        if config.ssl.enabled:
            factory = ProxyServerFactory(self.core, b"https")
            port = self.reactor.listenSSL(
                server.port, factory, _tls_server_options(config), backlog=1024, interface=server.host
            )
        else:
            factory = ProxyServerFactory(self.core, b"http")
            port = self.reactor.listenTCP(server.port, factory, backlog=1024, interface=server.host)
        self.ports.append(port)
        from speedproxy.admin.site import admin_site
        from speedproxy.master.listeners import parse_listen

        admin_host, admin_port = parse_listen(config.admin.listen)
        self.admin_port = self.reactor.listenTCP(admin_port, admin_site(self), interface=admin_host)
        address = port.getHost()
        log.info(
            "speedproxy {version} serving on {host}:{port} ({routes} routes, {groups} upstream groups)",
            version=__version__,
            host=address.host,
            port=address.port,
            routes=len(config.routing),
            groups=len(config.backends),
        )

    # The same control surface as the master, for the admin site.

    def state(self) -> dict:
        assert self.core is not None
        return {
            "config": self.config,
            "index": self.core.stats_index,
            "workers": [{"slot": 0, "pid": os.getpid(), "ready": True, "config_version": 1}],
            "restarts": 0,
            "config_version": 1,
            "backend_up": {},
        }

    def stats_snapshot(self) -> dict:
        from speedproxy.stats.reader import StatsReader

        assert self.core is not None
        state = self.state()
        return StatsReader(self.core.shared.segment).snapshot(
            self.config, self.core.stats_index, state["workers"], {"version": __version__}  # type: ignore[arg-type]
        )

    def metrics_text(self) -> bytes:
        from speedproxy.stats.prometheus import SegmentCollector, render_metrics
        from speedproxy.stats.reader import StatsReader

        assert self.core is not None
        return render_metrics(SegmentCollector(StatsReader(self.core.shared.segment), self.state))

    def apply_config(self, config: Config) -> None:
        """Apply a new config to the running data path (listener unchanged)."""
        self.config = config
        if self.core is not None:
            self.core.apply_config(config)

    def stopService(self) -> Deferred:
        """Stop accepting, let in-flight requests finish within the grace period."""
        super().stopService()
        ports, self.ports = self.ports, []
        if self.admin_port is not None:
            self.admin_port.stopListening()
        if self.core is None:
            return succeed(None)
        return drain(self.reactor, self.core, ports, self.config.server.shutdown_grace)
