"""Where Redis is: ``cluster.redis`` parsed.

Two forms::

    redis://[[user]:password@]host[:port][/db]            one server (port 6379, db 0)
    sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]

In the Sentinel form the hosts are Sentinels (port 26379 by default),
``service`` is the name they monitor (``sentinel monitor <service> ...``)
and the password, when given, is the Redis servers' (not the Sentinels').
IPv6 hosts are written in brackets: ``redis://[::1]:6379/0``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import unquote

REDIS_PORT = 6379
SENTINEL_PORT = 26379

_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.-]+))(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True)
class RedisAddress:
    """A parsed ``cluster.redis``."""

    #: ``(host, port)`` of the server, or of every Sentinel.
    hosts: Tuple[Tuple[str, int], ...]
    db: int = 0
    #: The Sentinel service name; empty: ``hosts`` is the server itself.
    service: str = ""
    password: Optional[str] = None
    username: Optional[str] = None

    @property
    def sentinel(self) -> bool:
        return bool(self.service)

    def describe(self) -> str:
        """The address without its password (for logs, the admin API and metrics)."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        if self.sentinel:
            return f"sentinel://{hosts}/{self.service}/{self.db}"
        return f"redis://{hosts}/{self.db}"


def _host_port(text: str, default_port: int) -> Tuple[str, int]:
    match = _HOST.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not host[:port]")
    port = int(match.group("port") or default_port)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return match.group("v6") or match.group("name"), port


def _db(text: str) -> int:
    if not text.isdigit() or int(text) > 1000:
        raise ValueError(f"the database must be a number (0-1000), got {text!r}")
    return int(text)


def parse_redis_address(text: str) -> RedisAddress:
    """Parse ``text``; ``ValueError`` says what is wrong."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("redis", "sentinel"):
        raise ValueError(
            'expected "redis://host:port/db" or "sentinel://host:26379,host2:26379/service/db", '
            f"got {mask_url_password(text)!r}"
        )
    credentials, at, rest = rest.rpartition("@")
    username: Optional[str] = None
    password: Optional[str] = None
    if at:
        user, colon, secret = credentials.partition(":")
        if colon:
            username, password = unquote(user) or None, unquote(secret)
        else:
            password = unquote(user)
    location, _, path = rest.partition("/")
    parts = [part for part in path.split("/")] if path else []
    if not location:
        raise ValueError(f"no host in {mask_url_password(text)!r}")
    if scheme == "redis":
        if "," in location:
            raise ValueError("a redis:// address names one server; list Sentinels with sentinel://")
        if len(parts) > 1:
            raise ValueError(f"expected redis://host:port/db, got {len(parts)} path parts")
        db = _db(parts[0]) if parts and parts[0] else 0
        return RedisAddress((_host_port(location, REDIS_PORT),), db, "", password, username)
    hosts = tuple(_host_port(item.strip(), SENTINEL_PORT) for item in location.split(",") if item.strip())
    if not hosts:
        raise ValueError(f"no Sentinel host in {mask_url_password(text)!r}")
    if not parts or not parts[0]:
        raise ValueError("a sentinel:// address needs the service name: sentinel://host:26379/mymaster[/db]")
    if len(parts) > 2:
        raise ValueError(f"expected sentinel://hosts/service/db, got {len(parts)} path parts")
    db = _db(parts[1]) if len(parts) == 2 and parts[1] else 0
    return RedisAddress(hosts, db, unquote(parts[0]), password, username)


def redis_address_of(text: str) -> RedisAddress:
    """``cluster.redis`` as written (a ``${env:}``/``${file:}`` reference or an
    address) parsed; ``ValueError`` (a :class:`SubstitutionError` is one) says
    what is wrong without quoting the password."""
    from speedproxy.config.substitutions import resolve

    return parse_redis_address(resolve(text.strip()))


#: What stands for a password in the config the admin API shows (as :data:`speedproxy.admin.changes.MASK`).
PASSWORD_MASK = "********"


def mask_url_password(text: str) -> str:
    """``text`` (a URL) with the password of its userinfo replaced by :data:`PASSWORD_MASK`.

    ``redis://:secret@host/0`` → ``redis://:********@host/0``; a user with
    no ``:`` is a password for Redis (``redis://secret@host``) and is masked
    whole; a ``${...}`` reference or a URL without userinfo is left as it is.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    authority, slash, path = rest.partition("/")
    credentials, at, hosts = authority.rpartition("@")
    if not at:
        return text
    user, colon, _ = credentials.partition(":")
    if colon:
        credentials = f"{user}:{PASSWORD_MASK}"
    elif scheme in ("redis", "sentinel"):
        credentials = PASSWORD_MASK
    else:
        credentials = f"{user}:{PASSWORD_MASK}" if user else PASSWORD_MASK
    return f"{scheme}://{credentials}@{hosts}{slash}{path}"
