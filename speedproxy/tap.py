"""``twistd speedproxy``: command-line options and ``makeService``.

The plugin in ``twisted/plugins`` only points here, so importing it stays
free of side effects.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Optional

from twisted.application.service import IService, MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from speedproxy import __version__

DEFAULT_CONFIG = "/etc/speedproxy/speedproxy.yaml"

log = Logger(namespace="speedproxy")


class Options(usage.Options):
    """Options of ``twistd speedproxy``."""

    synopsis = "[--config FILE] [--check] [--demo-origin]"
    longdesc = (
        "Run the speedproxy reverse proxy. With --check, only validate the "
        "config file, print what is wrong and exit 0 (valid) or 1 (invalid), "
        "as nginx -t does."
    )
    optParameters = [
        ["config", "c", DEFAULT_CONFIG, "Path to the YAML config file."],
    ]
    optFlags = [
        ["check", "t", "Validate the config file and exit."],
        [
            "demo-origin",
            None,
            "Also serve a small demo origin on the address of the first backend "
            "of the 'default' upstream (for trying speedproxy out).",
        ],
        ["version", "V", "Print the version and exit."],
    ]

    def opt_version(self) -> None:
        print(f"speedproxy {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        from speedproxy.config import ConfigError, load_config

        from speedproxy.tls import TLSConfigError, load_certificate

        try:
            self["loaded"] = load_config(self["config"])
            ssl = self["loaded"].ssl
            if ssl.enabled:
                try:
                    load_certificate(ssl.cert_file, ssl.key_file)
                except TLSConfigError as problem:
                    raise ConfigError([f"{self['config']}: {problem}"])
        except ConfigError as error:
            if self["check"]:
                print(str(error), file=sys.stderr)
                print(f"speedproxy: configuration file {self['config']} test failed", file=sys.stderr)
                sys.exit(1)
            raise usage.UsageError(f"invalid configuration:\n{error}")
        if self["check"]:
            print(f"speedproxy: configuration file {self['config']} test is successful")
            sys.exit(0)


class ReloadOnHangup(Service):
    """Signals when serving in this process (``server.workers: 0``).

    SIGHUP re-reads the config file and keeps the old one if the new is bad.
    SIGTERM/SIGINT stop gracefully and exit 0 (twistd's own handler would
    re-raise the signal after shutdown); a second one exits at once.
    """

    def __init__(self, reactor: Any, path: str, worker: Any) -> None:
        self.reactor = reactor
        self.path = path
        self.worker = worker
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self._previous = signal.signal(
            signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload)
        )
        self.reactor.callWhenRunning(self._install_stop_handlers)

    def _install_stop_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        if self._stopping:
            os._exit(1)  # second signal: no more waiting
        self._stopping = True
        self.reactor.callFromThread(self.reactor.stop)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)

    def reload(self) -> None:
        """Validate and apply the config file now; read the certificate files again."""
        from speedproxy.config import ConfigError
        from speedproxy.tls import config_for_reload, log_certificate, reload_refusal

        serves_tls = self.worker.tls is not None
        try:
            config = config_for_reload(self.path, serves_tls)
            self.worker.apply_config(config)
        except (ConfigError, ValueError) as error:  # TLSConfigError is a ValueError
            log.error("config reload refused, keeping the running config:\n{error}", error=str(error))
            return
        log.info("config reloaded from {path}", path=self.path)
        if reload_refusal(serves_tls, config.ssl.enabled) is None:
            self.worker.reload_ssl().addCallback(log_certificate).addErrback(
                lambda failure: log.error("TLS certificate reload failed: {error}", error=failure.getErrorMessage())
            )


def makeService(options: Options, reactor: Optional[Any] = None) -> IService:
    """Build the speedproxy service tree from parsed options."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from speedproxy.master.service import MasterService, worker_count
    from speedproxy.worker import ProxyWorkerService

    config = options["loaded"]
    root = MultiService()
    if options["demo-origin"]:
        from twisted.application.internet import TCPServer

        from speedproxy.demo import demo_site

        first = next(iter(config.backends.get("default", ())), None)
        if first is None:
            raise usage.UsageError("--demo-origin needs a backend in the 'default' upstream")
        TCPServer(first.port, demo_site(), interface=first.host).setServiceParent(root)
    if worker_count(config) == 0:
        # Serve in this process: no workers, no master.
        worker = ProxyWorkerService(reactor, config)
        worker.setServiceParent(root)
        ReloadOnHangup(reactor, options["config"], worker).setServiceParent(root)
    else:
        MasterService(reactor, config, options["config"]).setServiceParent(root)
    return root
