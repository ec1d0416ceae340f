"""Reading and writing the edge protection keys of a route: ``cors`` and ``signed_urls``.

The converters follow :mod:`speedproxy.config.loader`'s conventions (a
``ValueError`` for a value wrong as a whole, problems recorded per item
with their line otherwise); the loader calls them through
``loader._edge(name)``.  ``allow`` and ``deny`` (route and ``server``) are
the loader's own CIDR lists.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

from speedproxy.config.loader import (
    Converter,
    _boolean,
    _duration,
    _items,
    _Problems,
    _record,
    _Reported,
    _text,
    _TOKEN,
    _Val,
)
from speedproxy.config.model import CorsConfig, RouteConfig, SignedUrlsConfig
from speedproxy.config.substitutions import SubstitutionError, is_reference, resolve
from speedproxy.config.units import describe_value, format_duration

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

    return convert


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


_SIGNED_FIELDS: Dict[str, Converter] = {
    "secrets": _secrets,
    "param_signature": _param,
    "param_expires": _param,
    "bind_client_ip": _boolean,
}


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


# -- writing back --------------------------------------------------------------------


def dump_route(route: RouteConfig, data: Dict[str, Any]) -> None:
    """Lay out the edge keys of ``route`` in ``data`` (its mapping) as the file has them.

    Empty lists and ``None`` sections are left out; signing secrets are
    written as given (``${file:...}`` stays a reference).
    """
    for key in ("allow", "deny"):
        if key in data and not data[key]:
            del data[key]
    if route.cors is None:
        data.pop("cors", None)
    else:
        settings = route.cors
        data["cors"] = {
            "origins": list(settings.origins),
            "methods": list(settings.methods),
            "headers": list(settings.headers),
            "expose": list(settings.expose),
            "credentials": settings.credentials,
            "max_age": format_duration(settings.max_age),
        }
    if route.signed_urls is None:
        data.pop("signed_urls", None)
    else:
        signed = route.signed_urls
        data["signed_urls"] = {
            "secrets": list(signed.sources),
            "param_signature": signed.param_signature,
            "param_expires": signed.param_expires,
            "bind_client_ip": signed.bind_client_ip,
        }
