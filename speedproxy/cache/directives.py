"""Cache-Control directives of requests and responses (RFC 9111 5.2, RFC 5861).

Duplicate directives: the first occurrence wins (RFC 9111 4.2.1).  Request
directives are memoised by field value: the few values clients send
(``no-cache``, ``max-age=0``) are parsed once.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

from speedproxy.cache.conditional import Headers, combined_value, field_values

Directives = Dict[bytes, Optional[bytes]]

#: The largest delta-seconds a cache has to represent (RFC 9111 1.2.2).
MAX_DELTA = 2147483648

# ------------------------------------------------------------ Cache-Control


def _split_quoted(value: bytes) -> List[bytes]:
    """Split a list on the commas outside quoted strings."""
    items = []
    start = 0
    quoted = False
    index = 0
    end = len(value)
    while index < end:
        char = value[index]
        if quoted:
            if char == 0x5C:  # backslash: skip the escaped byte
                index += 1
            elif char == 0x22:
                quoted = False
        elif char == 0x22:
            quoted = True
        elif char == 0x2C:
            items.append(value[start:index])
            start = index + 1
        index += 1
    items.append(value[start:])
    return items


def _unquote(value: bytes) -> bytes:
    """The content of a quoted-string (a missing closing quote is tolerated)."""
    inner = value[1:-1] if len(value) > 1 and value[-1:] == b'"' else value[1:]
    if b"\\" not in inner:
        return inner
    out = bytearray()
    escaped = False
    for char in inner:
        if escaped or char != 0x5C:
            out.append(char)
            escaped = False
        else:
            escaped = True
    return bytes(out)


def parse_cache_control(values: Sequence[bytes]) -> Directives:
    """Parse Cache-Control field values (RFC 9111 5.2) into ``{directive: argument}``.

    Names are lower-cased, quoted-string arguments unquoted, a directive
    without argument maps to ``None``.  When a directive repeats, the first
    occurrence wins (RFC 9111 4.2.1).  Junk (empty members, stray quotes,
    spaces) is skipped or kept as unknown directives, never an error.
    """
    directives: Directives = {}
    for value in values:
        for item in _split_quoted(value) if b'"' in value else value.split(b","):
            name, equals, argument = item.partition(b"=")
            name = name.strip().lower()
            if not name or name in directives:
                continue
            if equals:
                argument = argument.strip()
                directives[name] = _unquote(argument) if argument[:1] == b'"' else argument
            else:
                directives[name] = None
    return directives


def response_directives(headers: Headers, lowered: List[bytes]) -> Directives:
    """The Cache-Control directives of a response (``{}`` without the field)."""
    if b"cache-control" not in lowered:
        return {}
    return parse_cache_control(field_values(headers, lowered, b"cache-control"))


def delta_seconds(argument: Optional[bytes]) -> Optional[int]:
    """A delta-seconds argument (RFC 9111 1.2.2), capped at 2^31; ``None`` if invalid."""
    if argument is None or not argument.isdigit():
        return None
    if len(argument) > 10:
        return MAX_DELTA
    seconds = int(argument)
    return seconds if seconds < MAX_DELTA else MAX_DELTA


class RequestDirectives:
    """The cache directives of a request (RFC 9111 5.2.1, RFC 5861 4); treat as immutable."""

    __slots__ = ("no_cache", "no_store", "max_age", "max_stale", "min_fresh", "only_if_cached", "stale_if_error")

    def __init__(
        self,
        no_cache: bool = False,
        no_store: bool = False,
        max_age: Optional[int] = None,
        max_stale: Optional[float] = None,
        min_fresh: Optional[int] = None,
        only_if_cached: bool = False,
        stale_if_error: Optional[int] = None,
    ) -> None:
        self.no_cache = no_cache
        self.no_store = no_store
        #: Largest acceptable age; an invalid value counts as 0.
        self.max_age = max_age
        #: Acceptable staleness: seconds, ``math.inf`` for a bare ``max-stale``.
        self.max_stale = max_stale
        self.min_fresh = min_fresh
        self.only_if_cached = only_if_cached
        self.stale_if_error = stale_if_error

    def __repr__(self) -> str:
        fields = ", ".join("%s=%r" % (name, getattr(self, name)) for name in self.__slots__)
        return "RequestDirectives(%s)" % fields


NO_DIRECTIVES = RequestDirectives()
_PRAGMA_NO_CACHE = RequestDirectives(no_cache=True)
_request_memo: Dict[bytes, RequestDirectives] = {}


def _request_directives(value: bytes) -> RequestDirectives:
    directives = parse_cache_control((value,))
    max_age = None
    if b"max-age" in directives:
        max_age = delta_seconds(directives[b"max-age"])
        if max_age is None:
            max_age = 0  # invalid: the most restrictive reading
    max_stale: Optional[float] = None
    if b"max-stale" in directives:
        argument = directives[b"max-stale"]
        max_stale = math.inf if argument is None else delta_seconds(argument)
    return RequestDirectives(
        no_cache=b"no-cache" in directives,
        no_store=b"no-store" in directives,
        max_age=max_age,
        max_stale=max_stale,
        min_fresh=delta_seconds(directives.get(b"min-fresh")),
        only_if_cached=b"only-if-cached" in directives,
        stale_if_error=delta_seconds(directives.get(b"stale-if-error")),
    )


def request_directives(headers: Headers, lowered: List[bytes]) -> RequestDirectives:
    """The cache directives of a request, memoised by field value.

    Without Cache-Control, ``Pragma: no-cache`` means ``no-cache`` (RFC 9111
    5.4; Pragma is ignored when Cache-Control is present).
    """
    if b"cache-control" in lowered:
        value = combined_value(headers, lowered, b"cache-control") or b""
        directives = _request_memo.get(value)
        if directives is None:
            if len(_request_memo) >= 256:
                _request_memo.clear()
            directives = _request_memo[value] = _request_directives(value)
        return directives
    if b"pragma" in lowered:
        for value in field_values(headers, lowered, b"pragma"):
            if b"no-cache" in [token.strip().lower() for token in value.split(b",")]:
                return _PRAGMA_NO_CACHE
    return NO_DIRECTIVES
