"""HTTP cache helpers: bodies derived from their path, and ``Cache-Status`` (RFC 9211) parsing."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Dict, List, Sequence, Tuple

from speedproxy.testing.http_backend import BackendExchange, Behaviour


def path_pattern(path: str, size: int) -> bytes:
    """``size`` bytes that depend on ``path`` and on each byte's position.

    Each 32-byte block is ``sha256(path + block number)``, so a body that is
    cut, shifted or mixed with another path's is told apart from the right
    one.  For cache tests: the origin answers a path with its pattern and the
    client checks it got exactly that.
    """
    prefix = path.encode("utf-8") + b"\0"
    blocks = (size + 31) // 32
    return b"".join(hashlib.sha256(prefix + b"%d" % index).digest() for index in range(blocks))[:size]


def path_body(size: int, headers: Sequence[Tuple[str, str]] = (), chunked: bool = False) -> Behaviour:
    """Answer with :func:`path_pattern` of the request path (query included) and ``headers``."""

    def behaviour(exchange: BackendExchange) -> None:
        body = path_pattern(exchange.request.path, size)
        if not chunked:
            exchange.send(200, body, headers, "application/octet-stream")
            return
        exchange.send_head(
            200, [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")] + list(headers)
        )
        if exchange.request.method == "HEAD":
            return
        for start in range(0, size, 64 * 1024):
            piece = body[start : start + 64 * 1024]
            exchange.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        exchange.write(b"0\r\n\r\n")

    return behaviour


def _split_outside_quotes(text: str, separator: str) -> List[str]:
    parts: List[str] = []
    current: List[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _sf_bare_item(text: str) -> Any:
    text = text.strip()
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if text == "?1":
        return True
    if text == "?0":
        return False
    return text


def parse_cache_status(value: str) -> List[Tuple[str, Dict[str, Any]]]:
    """Parse a ``Cache-Status`` field value (RFC 9211) into ``[(cache, params)]``.

    Members come in field order (the cache nearest the client last); a
    parameter without a value is ``True``.  E.g.
    ``speedproxy; fwd=miss; fwd-status=200; stored`` gives
    ``[("speedproxy", {"fwd": "miss", "fwd-status": 200, "stored": True})]``.
    """
    members: List[Tuple[str, Dict[str, Any]]] = []
    for member in _split_outside_quotes(value, ","):
        if not member.strip():
            continue
        parts = _split_outside_quotes(member, ";")
        params: Dict[str, Any] = {}
        for part in parts[1:]:
            name, equals, item = part.strip().partition("=")
            params[name.strip()] = _sf_bare_item(item) if equals else True
        members.append((str(_sf_bare_item(parts[0])), params))
    return members
