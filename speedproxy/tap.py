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
        signal.signal(signal.SIGUSR1, lambda *_: self.reactor.callFromThread(self._reopen_logs))
        self.reactor.callWhenRunning(self._install_stop_handlers)

    def _reopen_logs(self) -> None:
        """SIGUSR1 (logrotate): reopen the access log file."""
        core = getattr(self.worker, "core", None)
        if core is not None:
            core.reopen_access_log()

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


class AdoptedPort(Service):
    """Serves ``factory`` on an already bound, listening socket."""

    def __init__(self, reactor: Any, listener: Any, factory: Any) -> None:
        self.reactor = reactor
        self.listener = listener
        self.factory = factory
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        listener, self.listener = self.listener, None
        try:
            self.port = self.reactor.adoptStreamPort(listener.sock.fileno(), listener.sock.family, self.factory)
        finally:
            listener.close()  # the port holds its own copy of the descriptor

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def makeService(options: Options, reactor: Optional[Any] = None) -> IService:
    """Build the speedproxy service tree from parsed options."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    from speedproxy.admin.auth import AdminSecurityError, security_problem
    from speedproxy.master.listeners import ADMIN_KEY, DEMO_KEY, PROXY_KEY, bind_all, parse_listen
    from speedproxy.master.service import MasterService
    from speedproxy.master.supervision import worker_count
    from speedproxy.worker import ProxyWorkerService

    config = options["loaded"]
    # Checked again by the services; here it stops start-up before anything listens.
    problem = security_problem(config.admin)
    if problem is not None:
        raise AdminSecurityError(f"speedproxy: refusing to start: {problem}")
    wanted = [
        (PROXY_KEY, config.server.host, config.server.port),
        (ADMIN_KEY, *parse_listen(config.admin.listen)),
    ]
    if options["demo-origin"]:
        first = next(iter(config.backends.get("default", ())), None)
        if first is None:
            raise SystemExit("speedproxy: --demo-origin needs a backend in the 'default' upstream")
        wanted.append((DEMO_KEY, first.host, first.port))
    grpc = config.grpc
    if grpc.enabled:
        from speedproxy.admin.grpc.service import GRPC_KEY

        wanted.append((GRPC_KEY, grpc.host, grpc.port))
    # Every listener is bound here, before twistd writes its pid file,
    # daemonizes or starts any service: if one address cannot be used,
    # ListenError (a SystemExit) ends the process with one line on stderr
    # and exit status 1, and no client ever reached a listener.
    listener, admin_listener, *extra = bind_all(wanted)
    grpc_listener = extra.pop() if grpc.enabled else None
    demo = extra
    root = MultiService()
    if demo:
        from speedproxy.demo import demo_site

        AdoptedPort(reactor, demo[0], demo_site()).setServiceParent(root)
    if worker_count(config) == 0:
        # Serve in this process: no workers, no master.
        worker = ProxyWorkerService(reactor, config, listener=listener, admin_listener=admin_listener)
        worker.setServiceParent(root)
        control: Any = worker
        ReloadOnHangup(reactor, options["config"], worker).setServiceParent(root)
    else:
        control = MasterService(reactor, config, options["config"], listener=listener, admin_listener=admin_listener)
        control.setServiceParent(root)
    if grpc_listener is not None:
        from speedproxy.admin.grpc.service import GrpcAdminService

        # Started after the master (or the single process): it serves the
        # same calls as that one's admin API, through its admin context.
        GrpcAdminService(reactor, control, grpc_listener).setServiceParent(root)
    return root
