"""``POST /api/v1/sign``: a signed URL for a path of a route with ``signed_urls``.

Body: ``{"path": "/hls/live/index.m3u8", "ttl": "1h"}``, optionally
``"host"`` (to pick a route with a ``host``), ``"route"`` (to name it
instead of matching the path) and ``"client_ip"`` (required when the route
binds signatures to the client address).  ``ttl`` is a duration (``"90s"``,
``"1h"``) or seconds, 1 s to 366 days; 1 h when left out.  The path is
normalised as the proxy normalises request paths, and may carry a query:
kept as given (old signature parameters dropped) and, unless the route says
``signed_urls: {query: ignore}``, covered by the signature
(:mod:`speedproxy.edge.canonical_query`).  The answer::

    {"url": "/hls/live/index.m3u8?exp=1767225600&sig=...", "path": "/hls/live/index.m3u8",
     "route": "video", "expires": 1767225600, "expires_at": "2026-01-01T00:00:00Z"}

Behind the API key, and audited like every other ``POST`` (the audit line
notes the path and ttl, never a secret).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from twisted.web.server import Request

from speedproxy.admin.context import APIResource
from speedproxy.admin.json_resource import bad_request, read_json_object
from speedproxy.config.model import Config, RouteConfig
from speedproxy.config.units import parse_duration
from speedproxy.edge.canonical_query import unsigned_names
from speedproxy.edge.ip_lists import parse_address
from speedproxy.edge.signed_urls import signed_query
from speedproxy.proxy.paths import PathError, normalise_path
from speedproxy.routing import normalise_host

FIELDS = ("path", "ttl", "host", "route", "client_ip")
#: Longest lifetime of a signed URL made here.
MAX_TTL = 366 * 86400.0
MAX_PATH = 8192


def _route_for(config: Config, host: Optional[str], path: bytes) -> Optional[RouteConfig]:
    """The route the proxy would send ``host``/``path`` to (as :class:`speedproxy.routing.Router`)."""
    hostname = normalise_host(host.encode("latin-1")) if host else b""
    best: Optional[RouteConfig] = None
    rank = None
    for route in config.routing.values():
        if route.host is not None:
            pattern = route.host.lower().encode("latin-1")
            matches = hostname.endswith(pattern[1:]) if pattern[:2] == b"*." else hostname == pattern
            if not matches:
                continue
        if not path.startswith(route.path.encode("utf-8")):
            continue
        key = (route.host is not None, len(route.path))
        if rank is None or key > rank:
            best, rank = route, key
    return best


def _ttl(value: Any) -> float:
    if value is None:
        return 3600.0
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        raise bad_request(f"ttl: {error}", "ttl") from None
    if not 1 <= seconds <= MAX_TTL:
        raise bad_request("ttl must be between 1s and 366d", "ttl")
    return seconds


class SignResource(APIResource):
    """``POST /api/v1/sign``."""

    def json_POST(self, request: Request) -> Dict[str, Any]:
        body = read_json_object(request)
        for key in body:
            if key not in FIELDS:
                raise bad_request(f"unknown key {key!r} (known: {', '.join(FIELDS)})", key)
        raw = body.get("path")
        if not isinstance(raw, str) or not raw.startswith("/") or len(raw) > MAX_PATH:
            raise bad_request('path must be a string starting with "/"', "path")
        if not raw.isascii() or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in raw) or "#" in raw:
            raise bad_request("path must be ASCII without spaces, control characters or a fragment "
                              "(percent-encode them, as clients send them)", "path")
        for name in ("host", "route", "client_ip"):
            if name in body and not isinstance(body[name], str):
                raise bad_request(f"{name} must be a string", name)
        ttl = _ttl(body.get("ttl"))
        config = self.api.config
        server = config.server
        target, question, query = raw.partition("?")
        try:
            path = normalise_path(target.encode("ascii"), server.merge_slashes, server.escaped_slashes == "keep")
        except PathError as error:
            raise bad_request(f"path: {error}", "path") from None
        name = body.get("route")
        if name is not None:
            route = config.routing.get(name)
            if route is None:
                raise bad_request(f"no route {name!r} (known: {', '.join(config.routing)})", "route")
            if not path.startswith(route.path.encode("utf-8")):
                raise bad_request(f"route {name!r} serves paths under {route.path}, not {path.decode()}", "path")
        else:
            route = _route_for(config, body.get("host"), path)
            if route is None:
                raise bad_request("no route serves this path", "path")
        settings = route.signed_urls
        if settings is None:
            raise bad_request(f"route {route.name!r} does not use signed_urls", "route" if name else "path")
        client_ip = body.get("client_ip")
        if settings.bind_client_ip:
            if client_ip is None:
                raise bad_request(f"route {route.name!r} binds signatures to the client address: give client_ip", "client_ip")
            if parse_address(client_ip) is None:
                raise bad_request(f"client_ip: {client_ip!r} is not an IP address", "client_ip")
        expires = int(self.api.clock.seconds() + ttl)
        text = path.decode("ascii")
        # A query the caller gave is kept (without old signature parameters) and signed.
        kept = "&".join(
            part for part in query.split("&")
            if part and part.partition("=")[0] not in (settings.param_signature, settings.param_expires)
        )
        signed = signed_query(settings, text, expires, client_ip, kept, unsigned_names(route))
        request.audit_note = f"path={text} ttl={int(ttl)}s route={route.name}"  # type: ignore[attr-defined]
        answer: Dict[str, Any] = {
            "url": text + "?" + (kept + "&" if kept else "") + signed,
            "path": text,
            "route": route.name,
            "expires": expires,
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
        }
        if settings.bind_client_ip:
            answer["client_ip"] = client_ip
        return answer
