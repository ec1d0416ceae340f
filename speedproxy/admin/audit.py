"""The audit log of the admin API.

One line per mutating call (any method but GET/HEAD/OPTIONS), allowed or
refused, and per call refused for a missing or wrong API key, whatever its
method.  Lines go to the twisted logger under the namespace
``speedproxy.audit`` (so to twistd's log) and read::

    audit time=2025-01-01T12:00:00.000Z peer=127.0.0.1 method=POST
      path=/api/v1/backends/add outcome=allowed status=200

(on one line), followed by ``note=...`` when the call acted on something its
path does not show (``note="url=http://host/x"`` for a purge, the purge
path ``via=`` of a cascaded one).  ``outcome`` is ``allowed`` (2xx), ``failed`` (the call was
authorised but answered 4xx/5xx), ``denied`` (401, with ``reason=missing_key``
or ``reason=wrong_key``) or ``aborted`` (the client went away first).  The
key itself is never logged, and query parameters that look like secrets are
masked.  The gRPC management service writes the same lines through
:func:`write_line`, with ``method=GRPC``, the RPC's path and
``grpc_status=<code>`` after the status.
"""

from __future__ import annotations

import time
from typing import Any, Optional
from urllib.parse import parse_qsl, urlencode

from twisted.logger import Logger

log = Logger(namespace="speedproxy.audit")

SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
_SECRET_PARAMS = ("key", "token", "secret", "password")


def _clean_path(uri: bytes) -> str:
    text = uri.decode("latin-1")
    path, sep, query = text.partition("?")
    if not sep:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    masked = [(k, "***" if any(word in k.lower() for word in _SECRET_PARAMS) else v) for k, v in pairs]
    return path + "?" + urlencode(masked)


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % int((seconds % 1) * 1000)


def peer_of(request: Any) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


def should_audit(method: bytes, status: int) -> bool:
    return method.upper() not in SAFE_METHODS or status == 401


def _note(request: Any, note: Optional[str]) -> Optional[str]:
    """The call's note plus, for a cascaded purge, the nodes it came through."""
    headers = getattr(request, "requestHeaders", None)
    via = headers.getRawHeaders(b"X-Speedproxy-Purge-Path") if headers is not None else None
    parts = [note] if note else []
    if via:
        parts.append("via=" + ",".join(value.decode("latin-1") for value in via).replace(" ", ""))
    if not parts:
        return None
    text = " ".join(parts)
    text = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text)[:1000]
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def outcome_of(status: int, aborted: bool = False) -> str:
    """``allowed`` (2xx), ``denied`` (401), ``failed`` (other) or ``aborted``."""
    if aborted:
        return "aborted"
    if status == 401:
        return "denied"
    if 200 <= status < 300:
        return "allowed"
    return "failed"


def write_line(
    peer: str,
    method: str,
    path: str,
    status: int,
    reason: Optional[str] = None,
    aborted: bool = False,
    quoted_note: Optional[str] = None,
    extra: str = "",
) -> str:
    """Write one audit line (the JSON API's and the gRPC service's share it); return it."""
    text = "audit time={time} peer={peer} method={method} path={path} outcome={outcome} status={status}".format(
        time=_utc(time.time()),
        peer=peer,
        method=method,
        path=path,
        outcome=outcome_of(status, aborted),
        status=status,
    )
    if extra:
        text += " " + extra
    if reason:
        text += f" reason={reason}"
    if quoted_note:
        text += f" note={quoted_note}"
    log.info("{line}", line=text)
    return text


def audit_line(
    request: Any, status: int, reason: Optional[str] = None, aborted: bool = False, note: Optional[str] = None
) -> Optional[str]:
    """Write the audit line for a finished ``request`` if it needs one; return it."""
    method = (request.method or b"-").upper()
    if not aborted and not should_audit(method, status):
        return None
    if aborted and method in SAFE_METHODS:
        return None
    return write_line(
        peer_of(request),
        method.decode("latin-1"),
        _clean_path(request.uri or b"-"),
        status,
        reason,
        aborted,
        _note(request, note),
    )
