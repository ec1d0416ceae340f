"""Config rollout: a change pushed to every worker, all or nothing, one at a time.

A change (SIGHUP, the admin API) is computed from the config the previous
one left live, pushed to every live worker over AMP (``ApplyConfig``) and
made the master's config once each of them applied it.  If one refuses
(or does not answer within ``push_timeout``), every worker that took it
is put back on the previous config and the change fails.  Workers that
connect meanwhile are brought up to date afterwards.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, List, Tuple

from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, DeferredList, DeferredLock, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from speedproxy.config import Config, ConfigError, config_to_mapping
from speedproxy.config.model import restart_required
from speedproxy.master.affinity import pinner
from speedproxy.master.control import ApplyConfig, Shutdown
from speedproxy.master.supervision import WorkerHandle, worker_count
from speedproxy.stats.segment import StatsIndex
from speedproxy.tls import LoadedCertificate, TLSConfigError, config_for_reload, load_certificate, log_certificate, reload_refusal

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.master.service import MasterService

log = Logger(namespace="speedproxy.master")


class ConfigRollout:
    """Rolls config changes out to the workers of ``master``.

    ``lock`` serialises every change to what the workers run (TLS reloads
    take it too); the config, its version and the stats index stay the
    master's.
    """

    def __init__(self, master: "MasterService", lock: DeferredLock) -> None:
        self.master = master
        self.lock = lock

    def push(self, handle: WorkerHandle, config: Config, version: int) -> Deferred:
        """Send ``config`` as ``version`` to one worker; fires with its answer."""
        master = self.master
        if handle.control is None:
            return succeed(None)
        if config.ssl.enabled != master.tls_listener:
            # Not before a restart: a respawned worker must not change the
            # listener's TLS mode under the others.
            config = replace(config, ssl=replace(config.ssl, enabled=master.tls_listener))
        pushed = handle.control.callRemote(
            ApplyConfig,
            config=config_to_mapping(config),
            version=version,
            stats_index=master.index.to_mapping(),
        )
        if master.push_timeout:
            pushed.addTimeout(master.push_timeout, master.reactor)
        return pushed

    def welcome(self, handle: WorkerHandle) -> None:
        """A worker just connected: give it the live config (a starting one that refuses is stopped)."""
        control = handle.control

        def refused(failure: Failure) -> None:
            log.error("worker {slot} refused the config: {error}", slot=handle.slot, error=failure.getErrorMessage())
            if not handle.ready and handle.control is control:
                # It cannot start (certificate files being replaced, say): stop
                # it, so it is respawned with backoff and reads everything again.
                control.callRemote(Shutdown, grace=0.0)  # type: ignore[union-attr]

        self.push(handle, self.master.config, self.master.config_version).addErrback(refused)

    def reload(self) -> Deferred:
        """SIGHUP: re-read the file; apply it if valid, else keep running as is.

        As with nginx, the TLS certificate files are read again too (a
        renewed certificate at the same path is picked up).
        """
        master = self.master
        if master.config_path is None:
            return succeed(None)
        try:
            config = config_for_reload(master.config_path, master.tls_listener)
        except (ConfigError, TLSConfigError) as error:
            log.error("config reload refused, keeping the running config:\n{error}", error=str(error))
            return succeed(None)

        def applied(version: int) -> Any:
            log.info("config version {version} from {path} is live", version=version, path=master.config_path)
            if reload_refusal(master.tls_listener, master.config.ssl.enabled) is None:
                return master.reload_ssl().addCallback(log_certificate)
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
        master = self.master

        def change() -> Deferred:
            config = make(master.config)
            ssl = config.ssl
            loaded = None
            if ssl.enabled and (ssl.cert_file, ssl.key_file) != (master.config.ssl.cert_file, master.config.ssl.key_file):
                loaded = load_certificate(ssl.cert_file, ssl.key_file)  # other files: refused here if unusable
            applied = self.apply_config(config)
            if loaded is not None and master.tls_listener:
                applied.addCallback(self._serving, loaded)
            return applied

        return self.lock.run(change)

    def _serving(self, result: Any, certificate: LoadedCertificate) -> Any:
        """Every worker now gives new handshakes ``certificate``."""
        self.master.certificate = certificate
        return result

    def apply_config(self, config: Config) -> Deferred:
        """Validate-free apply of an already validated config to every worker.

        Fires with the new version once every live worker applied it; if one
        refuses, the others are put back on the previous config and the
        Deferred fails.
        """
        master = self.master
        old = master.config
        fixed = restart_required(old, config)
        if fixed:
            log.warn("{keys} changed: takes effect only after a restart", keys=", ".join(fixed))
        index = StatsIndex.from_mapping(master.index.to_mapping())
        try:
            index.assign_config(config, master.segment.layout if master.segment else None)
        except ValueError as error:
            return fail(error)
        # Kept even if the change is refused: workers that took it may have
        # counted requests under the new names, and an index is never reused.
        master.index = index
        version = master.config_version + 1
        live = master.supervisor.live()
        pushes = [self.push(handle, config, version) for handle in live]

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
                        self.push(handle, old, master.config_version).addErrback(lambda _: None)
                raise RuntimeError(
                    "; ".join(
                        "worker %d: %s" % (handle.slot, value.getErrorMessage()) for handle, value in failures
                    )
                )
            master.config = config
            master.config_version = version
            for handle in live:
                handle.version = version
            # Workers that connected while this change was in flight were
            # given the previous config: bring them up to date.
            for handle in list(master.workers.values()):
                if handle not in live and handle.control is not None and not handle.retiring:
                    self.push(handle, config, version).addErrback(
                        lambda failure, slot=handle.slot: log.error(
                            "worker {slot} refused the config: {error}", slot=slot, error=failure.getErrorMessage()
                        )
                    )
            master.supervisor.resize(worker_count(config), config.server.shutdown_grace)
            if config.server.cpu_affinity != old.server.cpu_affinity:
                pinner.repin([(h.slot, h.pid) for h in master.workers.values()], config.server.cpu_affinity)
            if master.health is not None:
                master.health.update(config.backends)
            return version

        return DeferredList(pushes, consumeErrors=True).addCallback(applied)
