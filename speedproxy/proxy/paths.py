"""One meaning per request target: the path normalisation done before routing.

A request path is normalised the way RFC 3986 (sections 6.2.2 and 5.2.4)
and Envoy's ``normalize_path`` do, so that routing, per-route filters, the
cache key and the backend all see the same path:

- percent-encoded unreserved characters (``%41`` ``%2e`` ``%7E``...) are
  decoded, other escapes get upper-case hex digits;
- dot segments are removed (``/a/./b/../c`` is ``/a/c``); a path that climbs
  above the root (``/../x``) is refused;
- ``%00``, an encoded control byte, or a malformed escape is refused; an
  encoded ``/`` or ``\\`` (and a raw ``\\``) is refused unless the operator
  keeps them (``server.escaped_slashes: keep``), since a backend may decode
  them into separators that the proxy never saw;
- ``server.merge_slashes`` also folds runs of ``/`` into one.

The query is left as the client sent it.
"""

from __future__ import annotations

import re
from typing import Tuple

__all__ = ["PathError", "normalise_path", "split_target"]

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%(..)?", re.S)
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_SLASHES = re.compile(rb"//+")


class PathError(ValueError):
    """A request path the proxy refuses (answered 400); the message says why."""


def split_target(target: bytes) -> Tuple[bytes, bytes]:
    """Split an origin-form target into its path and query (``?`` included)."""
    query = target.find(b"?")
    if query < 0:
        return target, b""
    return target[:query], target[query:]


def _decode_escape(match: "re.Match[bytes]", keep_slashes: bool) -> bytes:
    pair = match.group(1)
    if pair is None or pair[0] not in _HEX or pair[1] not in _HEX:
        raise PathError("malformed percent-encoding in the path")
    value = int(pair, 16)
    if value in _UNRESERVED:
        return bytes((value,))
    if value == 0:
        raise PathError("%00 in the path")
    if value < 0x20 or value == 0x7F:
        raise PathError("encoded control character in the path")
    if (value == 0x2F or value == 0x5C) and not keep_slashes:
        raise PathError("encoded '/' or '\\' in the path")
    return b"%" + pair.upper()


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 5.2.4 on an absolute path; refuse one that climbs above the root."""
    output = []
    segments = path.split(b"/")
    last = len(segments) - 1
    for index in range(1, len(segments)):
        segment = segments[index]
        if segment == b".":
            if index == last:
                output.append(b"")
        elif segment == b"..":
            if not output:
                raise PathError("the path climbs above the root")
            output.pop()
            if index == last:
                output.append(b"")
        else:
            output.append(segment)
    return b"/" + b"/".join(output)


def normalise_path(path: bytes, merge_slashes: bool = False, keep_escaped_slashes: bool = False) -> bytes:
    """Return the normalised form of an absolute request path.

    :raises PathError: for a path that must be refused (see the module doc).
    """
    # (find, not ``in``: CPython's ``bytes in bytes`` first tries the operand
    # as an integer, and builds and drops a TypeError each time.)
    if (
        path.find(b"%") < 0
        and path.find(b"/.") < 0
        and path.find(b"\\") < 0
        and not (merge_slashes and path.find(b"//") >= 0)
    ):
        return path  # nothing to do: the common case costs four scans
    if b"\\" in path and not keep_escaped_slashes:
        raise PathError("'\\' in the path")
    if b"%" in path:
        path = _ESCAPE.sub(lambda match: _decode_escape(match, keep_escaped_slashes), path)
    if merge_slashes:
        path = _SLASHES.sub(b"/", path)
    if b"/." in path:
        path = _remove_dot_segments(path)
    return path
