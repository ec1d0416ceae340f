"""TLS reload: the certificate files checked in the master, then read again by every worker.

``POST /api/v1/config/reload-ssl`` and SIGHUP come here.  The files are
loaded in the master before any worker is asked, so files that cannot be
used change nothing; then every live worker reloads them (``ReloadTLS``)
and must report the same certificate (:mod:`speedproxy.tls` holds the
certificate itself and the errors named below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from twisted.internet import error as net_error
from twisted.internet.defer import Deferred, DeferredList, DeferredLock, fail

from speedproxy.master.control import ReloadTLS
from speedproxy.tls import TLSConfigError, TLSNotEnabled, TLSReloadIncomplete, load_certificate, reload_refusal

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.master.service import MasterService


class TLSReload:
    """Reloads the listener's certificate on the workers of ``master``.

    ``lock`` is the one config changes take, so a reload never runs in the
    middle of a config rollout.
    """

    def __init__(self, master: "MasterService", lock: DeferredLock) -> None:
        self.master = master
        self.lock = lock

    def reload_ssl(self) -> Deferred:
        """Read the TLS certificate and key files again, on every worker.

        The files are checked here first, so files that cannot be used
        change nothing.  Fires with ``{"reloaded": True, "workers": n,
        "certificate": {...}}`` once every live worker gives new handshakes
        the files' certificate (open connections keep theirs); fails with
        :class:`TLSNotEnabled`, :class:`TLSConfigError` (names the file) or
        :class:`TLSReloadIncomplete` (names the workers that did not take it).
        """
        return self.lock.run(self._reload_ssl)

    def _reload_ssl(self) -> Deferred:
        master = self.master
        ssl = master.config.ssl
        refusal = reload_refusal(master.tls_listener, ssl.enabled)
        if refusal is not None:
            return fail(TLSNotEnabled(refusal))
        try:
            loaded = load_certificate(ssl.cert_file, ssl.key_file)
        except TLSConfigError:
            return fail()
        live = master.supervisor.live()
        calls = []
        for handle in live:
            call = handle.control.callRemote(ReloadTLS)  # type: ignore[union-attr]
            if master.push_timeout:
                call.addTimeout(master.push_timeout, master.reactor)
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
            master.certificate = loaded
            result: Dict[str, Any] = {"reloaded": True, "workers": len(reloaded), "certificate": loaded.summary()}
            if starting:
                result["starting"] = sorted(starting)
            return result

        return DeferredList(calls, consumeErrors=True).addCallback(collect)
