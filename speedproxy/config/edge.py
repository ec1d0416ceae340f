"""Reading and writing the edge protection keys of a route: ``cors`` and ``signed_urls``.

The converters follow :mod:`speedproxy.config.schema`'s conventions (a
``ValueError`` for a value wrong as a whole, problems recorded per item
with their line otherwise).  :data:`CORS` and :data:`SIGNED_URLS` declare
each key once, for reading and writing back; :mod:`speedproxy.config.routes`
holds them.  ``allow`` and ``deny`` (route and ``server``) are the common
CIDR lists of :mod:`speedproxy.config.kinds`.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from speedproxy.config.kinds import TOKEN as _TOKEN
from speedproxy.config.kinds import as_list
from speedproxy.config.kinds import boolean as _boolean
from speedproxy.config.kinds import duration as _duration
from speedproxy.config.kinds import items as _items
from speedproxy.config.kinds import text as _text
from speedproxy.config.located import Val as _Val
from speedproxy.config.model import CorsConfig, SignedUrlsConfig
from speedproxy.config.problems import Problems as _Problems
from speedproxy.config.problems import Reported as _Reported
from speedproxy.config.schema import Converter, Kind, Section, written_from
from speedproxy.config.schema import read_fields as _record
from speedproxy.config.substitutions import SubstitutionError, is_reference, resolve
from speedproxy.config.units import describe_value

#: Shortest signing key accepted (an HMAC-SHA256 key should carry at least 128 bits).
MIN_SECRET = 16

_ORIGIN = re.compile(r"([a-z][a-z0-9+.\-]*)://(\*\.)?([a-z0-9\-._~]+|\[[0-9a-f:.]+\])(:\d{1,5})?")
_PARAM = re.compile(r"[A-Za-z0-9_.~\-]+")


def _list_of(check: Any, what: str) -> Converter:
    """A list whose items ``check(text) -> value`` accepts (``ValueError`` otherwise)."""

    def convert(problems: _Problems, val: _Val, path: str) -> Tuple[Any, ...]:
        out: List[Any] = []
        items = _items(val, what)
        for index, item in enumerate(items):
            try:
                out.append(check(_text(item)))
            except ValueError as error:
                problems.add(item.line, f"{path}[{index}]", str(error))
        if len(out) != len(items):
            raise _Reported
        return tuple(out)

    return Kind(convert, write=as_list)


def origin(text: str) -> str:
    """``*`` or a serialised origin ``scheme://host[:port]`` (``https://*.example.com`` matches subdomains)."""
    if text == "*":
        return text
    lowered = text.lower()
    match = _ORIGIN.fullmatch(lowered)
    if match is None or (match.group(4) and not 1 <= int(match.group(4)[1:]) <= 65535):
        raise ValueError(
            f'expected an origin such as "https://player.example.com" (scheme://host[:port], no path) '
            f'or "*", got {describe_value(text)}'
        )
    return lowered


def _method(text: str) -> str:
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"expected an HTTP method such as GET, got {describe_value(text)}")
    return text.upper()


def _header_or_star(text: str) -> str:
    if text != "*" and not _TOKEN.fullmatch(text):
        raise ValueError(f'expected an HTTP header name or "*", got {describe_value(text)}')
    return text


_CORS_FIELDS: Dict[str, Converter] = {
    "origins": _list_of(origin, "origins"),
    "methods": _list_of(_method, "HTTP methods"),
    "headers": _list_of(_header_or_star, "header names"),
    "expose": _list_of(_header_or_star, "header names"),
    "credentials": _boolean,
    "max_age": _duration(positive=False),
}
#: ``routing.<name>.cors``, read by :func:`cors`.
CORS = Section(CorsConfig, _CORS_FIELDS, required=("origins",))


def cors(problems: _Problems, val: _Val, path: str) -> Optional[CorsConfig]:
    """``routing.<name>.cors``: ``null`` is off."""
    if val.value is None:
        return None
    fields = _record(problems, val, path, _CORS_FIELDS, ("origins",))
    config = CorsConfig(**fields)
    if not config.origins:
        problems.add(val.value["origins"].line, f"{path}.origins", "list at least one origin (or \"*\")")
        raise _Reported
    if config.credentials:
        for key in ("origins", "headers", "expose"):
            if "*" in getattr(config, key):
                problems.add(
                    val.value[key].line,
                    f"{path}.{key}",
                    '"*" cannot be used with credentials: true (browsers refuse a wildcard with '
                    "credentials): list the values",
                )
                raise _Reported
    return config


def _secret(item: _Val) -> Tuple[str, str]:
    """``(source, secret)`` of one ``secrets`` entry."""
    source = _text(item)
    try:
        secret = resolve(source)
    except SubstitutionError as error:
        raise ValueError(str(error)) from None
    if len(secret.encode("utf-8")) < MIN_SECRET:
        what = "the value of " + source if is_reference(source) else "a secret"
        raise ValueError(
            f"{what} must be at least {MIN_SECRET} bytes long (make one with `openssl rand -hex 32`)"
        )
    return source, secret


def _secrets(problems: _Problems, val: _Val, path: str) -> Tuple[Tuple[str, str], ...]:
    pairs = []
    items = _items(val, "secrets")
    if not items:
        raise ValueError("list at least one secret (the first signs, every one verifies)")
    for index, item in enumerate(items):
        try:
            pairs.append(_secret(item))
        except ValueError as error:
            problems.add(item.line, f"{path}[{index}]", str(error))
    if len(pairs) != len(items):
        raise _Reported
    return tuple(pairs)


def _param(problems: _Problems, val: _Val, path: str) -> str:
    text = _text(val)
    if not _PARAM.fullmatch(text):
        raise ValueError(f"expected a query parameter name (letters, digits, _ . ~ -), got {describe_value(text)}")
    return text


#: ``signed_urls.query``: what the signature says about the query.
QUERY_MODES = ("signed", "ignore")


def _query_mode(problems: _Problems, val: _Val, path: str) -> str:
    text = val.value if isinstance(val.value, str) else None
    if text not in QUERY_MODES:
        raise ValueError(
            'expected "signed" (the signature covers every query parameter but its own) or "ignore" '
            f"(it covers the path only: parameters may be added or changed), got {describe_value(val.value)}"
        )
    return str(text)


_SIGNED_FIELDS: Dict[str, Converter] = {
    # Written back as given (``${file:...}`` stays a reference), never resolved.
    "secrets": written_from("sources", Kind(_secrets, write=as_list)),
    "param_signature": _param,
    "param_expires": _param,
    "bind_client_ip": _boolean,
    "query": _query_mode,
}


#: ``routing.<name>.signed_urls``, read by :func:`signed_urls`.
SIGNED_URLS = Section(
    SignedUrlsConfig,
    _SIGNED_FIELDS,
    required=("secrets",),
    derived={"secrets": "the keys resolved from the sources written under secrets"},
)


def signed_urls(problems: _Problems, val: _Val, path: str) -> Optional[SignedUrlsConfig]:
    """``routing.<name>.signed_urls``: ``null`` is off."""
    if val.value is None:
        return None
    fields = _record(problems, val, path, _SIGNED_FIELDS, ("secrets",))
    pairs = fields.pop("secrets")
    config = SignedUrlsConfig(
        secrets=tuple(secret for _, secret in pairs), sources=tuple(source for source, _ in pairs), **fields
    )
    if config.param_signature == config.param_expires:
        given = val.value.get("param_expires") or val.value.get("param_signature") or val
        problems.add(given.line, f"{path}.param_expires", "must differ from param_signature")
        raise _Reported
    return config
