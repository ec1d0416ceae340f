"""API-key protection of the admin API.

The key comes from, in this order: ``admin.api_key``, the first line of the
file named by ``admin.api_key_file``, the ``SPEEDPROXY_API_KEY`` environment
variable of the master.  When there is one, every endpoint but the open ones
(:data:`OPEN_PATHS`) needs an ``X-API-Key`` header equal to it, compared in
constant time.  Without a key the API is open, which is only allowed when
``admin.listen`` is a loopback address.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Any, Mapping, Optional, Tuple

from speedproxy.config.model import AdminConfig
from speedproxy.master.listeners import parse_listen

#: Endpoints that answer without a key (health probes and monitoring).
OPEN_PATHS = frozenset({b"/health", b"/status", b"/stats", b"/upstream", b"/metrics"})

#: Environment variable holding the key when the config names none.
ENV_VAR = "SPEEDPROXY_API_KEY"

#: The header carrying the key.
HEADER = b"X-API-Key"


class AdminSecurityError(SystemExit):
    """The admin API would be reachable from the network without a key.

    A :class:`SystemExit`, so that twistd stops with the message on stderr
    and exit status 1 instead of a traceback.
    """

    def __str__(self) -> str:
        return str(self.code)


def read_key_file(path: str) -> str:
    """The first line of ``path``, stripped; ``""`` when the file is empty.

    :raises OSError: if the file cannot be read.
    """
    with open(path, encoding="utf-8") as stream:
        return stream.readline().strip()


def resolve_api_key(admin: AdminConfig, environ: Optional[Mapping[str, str]] = None) -> str:
    """The API key in force for ``admin`` (``""``: none).

    An unreadable ``api_key_file`` counts as a key that nobody can present:
    the API stays closed rather than open.
    """
    if admin.api_key:
        return admin.api_key
    if admin.api_key_file:
        try:
            key = read_key_file(admin.api_key_file)
        except OSError:
            return "\x00unreadable api_key_file\x00"
        if key:
            return key
    environ = os.environ if environ is None else environ
    return environ.get(ENV_VAR, "").strip()


def is_loopback(listen: str) -> bool:
    """Is the host of ``host:port`` a loopback address (or ``localhost``)?"""
    try:
        host, _ = parse_listen(listen)
    except ValueError:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def security_problem(admin: AdminConfig, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Why ``admin`` must not be served, or ``None`` when it is fine."""
    if is_loopback(admin.listen) or resolve_api_key(admin, environ):
        return None
    return (
        f"admin.listen is {admin.listen}, which is not a loopback address, and no API key is set: "
        f"set admin.api_key, admin.api_key_file or {ENV_VAR}, or listen on 127.0.0.1"
    )


class KeyChecker:
    """Decides whether a request may use a protected endpoint.

    The key is resolved again whenever the admin section of the live config
    changes (and the key file is re-read when its modification time does),
    so a key changed through the API or SIGHUP is in force at once.
    """

    def __init__(self, environ: Optional[Mapping[str, str]] = None) -> None:
        self.environ = environ
        self._cache: Optional[Tuple[Any, float, str]] = None

    def key_for(self, admin: AdminConfig) -> str:
        mtime = 0.0
        if not admin.api_key and admin.api_key_file:
            try:
                mtime = os.stat(admin.api_key_file).st_mtime
            except OSError:
                mtime = -1.0
        cached = self._cache
        if cached is not None and cached[0] == admin and cached[1] == mtime:
            return cached[2]
        key = resolve_api_key(admin, self.environ)
        self._cache = (admin, mtime, key)
        return key

    def check(self, admin: AdminConfig, presented: Optional[bytes]) -> Optional[str]:
        """``None`` when allowed, else why not (``missing_key`` / ``wrong_key``)."""
        key = self.key_for(admin)
        if not key:
            return None
        if not presented:
            return "missing_key"
        if hmac.compare_digest(presented, key.encode("utf-8")):
            return None
        return "wrong_key"


def refuse_insecure_admin(config: Any, environ: Optional[Mapping[str, str]] = None) -> None:
    """Stop start-up when the admin API would be open to the network.

    Logs the reason and raises :class:`AdminSecurityError`.
    """
    problem = security_problem(config.admin, environ)
    if problem is None:
        return
    from twisted.logger import Logger

    Logger(namespace="speedproxy.admin").critical("refusing to start: {problem}", problem=problem)
    raise AdminSecurityError(f"speedproxy: refusing to start: {problem}")
