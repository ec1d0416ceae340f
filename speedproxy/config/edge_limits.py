"""Reading and writing a route's ``rate_limit``, ``connection_limit`` and ``sessions``.

The converters follow :mod:`speedproxy.config.schema`'s conventions (a
``ValueError`` for a value wrong as a whole, problems recorded per key with
their line otherwise).  :data:`RATE_LIMIT`, :data:`CONNECTION_LIMIT` and
:data:`SESSIONS` declare each key once, for reading and writing back;
:mod:`speedproxy.config.routes` holds them.
"""

from __future__ import annotations

import re
from typing import Dict, Optional

from speedproxy.config.kinds import TOKEN as _TOKEN
from speedproxy.config.kinds import boolean as _boolean
from speedproxy.config.kinds import duration as _duration
from speedproxy.config.kinds import integer as _integer
from speedproxy.config.kinds import text as _text
from speedproxy.config.located import Val as _Val
from speedproxy.config.model import ConnectionLimitConfig, RateLimitConfig, RouteConfig, SessionsConfig
from speedproxy.config.problems import Problems as _Problems
from speedproxy.config.problems import Reported as _Reported
from speedproxy.config.schema import Converter, Kind, Section, is_empty, omit_if
from speedproxy.config.schema import read_fields as _record
from speedproxy.config.units import describe_value

#: A cookie name (RFC 6265 token) that is also a plain query parameter name.
_COOKIE = re.compile(r"[A-Za-z0-9_.~\-]{1,64}")


_REALM = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def _realm(val: _Val) -> str:
    text = _text(val)
    if text and not _REALM.fullmatch(text):
        raise ValueError(f"expected a realm name (letters, digits, _ . : -, at most 64), got {describe_value(text)}")
    return text


def _bucket_key(problems: _Problems, val: _Val, path: str) -> str:
    text = _text(val)
    if text in ("client_ip", "session"):
        return text
    if text.startswith("header:"):
        name = text[len("header:"):]
        if _TOKEN.fullmatch(name):
            return "header:" + name
    raise ValueError(
        f"expected client_ip, session or header:<Name> (e.g. header:X-API-Key), got {describe_value(text)}"
    )


def _status(problems: _Problems, val: _Val, path: str) -> int:
    value = _integer(400, 599)(problems, val, path)
    if value not in (429, 503):
        raise ValueError(f"expected 429 or 503, got {describe_value(val.value)}")
    return value


def _cookie(problems: _Problems, val: _Val, path: str) -> str:
    text = _text(val)
    if not _COOKIE.fullmatch(text):
        raise ValueError(f"expected a cookie name (letters, digits, _ . ~ -), got {describe_value(text)}")
    return text


_RATE_FIELDS: Dict[str, Converter] = {
    "requests": _integer(1, 10**9),
    "per": _duration(positive=True),
    "burst": _integer(0, 10**9),
    "key": _bucket_key,
}
_CONNECTION_FIELDS: Dict[str, Converter] = {"per_client": _integer(1, 10**6), "status": _status}
_SESSION_FIELDS: Dict[str, Converter] = {
    "required": _boolean,
    "cookie": _cookie,
    "ttl": _duration(positive=True),
    "max_per_client": _integer(1, 16),
    "realm": omit_if(is_empty, Kind(lambda problems, val, path: _realm(val))),
    "bind_client_ip": omit_if(is_empty, _boolean),
}
#: ``routing.<name>.rate_limit``, read by :func:`rate_limit`.
RATE_LIMIT = Section(RateLimitConfig, _RATE_FIELDS, required=("requests",))
#: ``routing.<name>.connection_limit``, read by :func:`connection_limit`.
CONNECTION_LIMIT = Section(ConnectionLimitConfig, _CONNECTION_FIELDS, required=("per_client",))
#: ``routing.<name>.sessions``, read by :func:`sessions`.
SESSIONS = Section(SessionsConfig, _SESSION_FIELDS)


def rate_limit(problems: _Problems, val: _Val, path: str) -> Optional[RateLimitConfig]:
    """``routing.<name>.rate_limit``: ``null`` is off; ``requests`` is required."""
    if val.value is None:
        return None
    config = RateLimitConfig(**_record(problems, val, path, _RATE_FIELDS, ("requests",)))
    if config.burst and config.burst < config.requests and "burst" in val.value:
        problems.add(
            val.value["burst"].line,
            f"{path}.burst",
            f"must be at least requests ({config.requests}) or 0 (= requests), got {config.burst}",
        )
        raise _Reported
    return config


def connection_limit(problems: _Problems, val: _Val, path: str) -> Optional[ConnectionLimitConfig]:
    """``routing.<name>.connection_limit``: ``null`` is off."""
    if val.value is None:
        return None
    return ConnectionLimitConfig(**_record(problems, val, path, _CONNECTION_FIELDS, ("per_client",)))


def sessions(problems: _Problems, val: _Val, path: str) -> Optional[SessionsConfig]:
    """``routing.<name>.sessions``: ``null`` is off."""
    if val.value is None:
        return None
    return SessionsConfig(**_record(problems, val, path, _SESSION_FIELDS))


def check_route(problems: _Problems, item: _Val, path: str, route: RouteConfig) -> None:
    """Cross-checks of a whole route: ``key: session`` needs ``sessions``."""
    limit = route.rate_limit
    if limit is not None and limit.key == "session" and route.sessions is None:
        given = item.value["rate_limit"]
        where = given.value.get("key", given) if isinstance(given.value, dict) else given
        problems.add(where.line, f"{path}.rate_limit.key", "key: session needs sessions on this route")
