"""Cache keys, Vary variants and invalidation targets (RFC 9111 2, 4.1, 4.4)."""

from __future__ import annotations

from typing import Collection, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import urljoin, urlsplit

from speedproxy.cache.conditional import Headers, field_values, first_value

SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})

# --------------------------------------------------------------------- Vary

#: Fields whose values are case-insensitive (normalised in variant keys).
_CASELESS_VALUES = frozenset({b"accept-encoding", b"accept-charset", b"accept-language"})


def vary_names(headers: Headers, lowered: List[bytes]) -> Optional[Tuple[bytes, ...]]:
    """The lower-cased, sorted, distinct field names a response varies on; ``None`` for ``Vary: *``."""
    if b"vary" not in lowered:
        return ()
    names = set()
    for value in field_values(headers, lowered, b"vary"):
        for name in value.split(b","):
            name = name.strip().lower()
            if name == b"*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


_memo: Dict[bytes, bytes] = {}
_caseless_memo: Dict[bytes, bytes] = {}


def _normalise(value: bytes, caseless: bool) -> bytes:
    memo = _caseless_memo if caseless else _memo
    normal = memo.get(value)
    if normal is None:
        normal = value
        if b"," in normal:
            normal = b", ".join([member for member in (part.strip() for part in normal.split(b",")) if member])
        if caseless:
            normal = normal.lower()
        if len(memo) >= 1024:
            memo.clear()
        memo[value] = normal
    return normal


def variant_key(names: Sequence[bytes], headers: Headers, lowered: List[bytes]) -> bytes:
    """The secondary key of a request for the ``Vary`` names (RFC 9111 4.1).

    Field lines are combined, whitespace around list commas and empty
    members dropped, Accept-Encoding/-Charset/-Language lower-cased; an
    absent field differs from an empty one.  Normalised values are memoised.
    """
    if not names:
        return b""
    parts = []
    for name in names:
        if name in lowered:
            if lowered.count(name) == 1:
                value = headers[lowered.index(name)][1]
            else:
                value = b", ".join(field_values(headers, lowered, name))
            parts.append(name + b"=" + _normalise(value, name in _CASELESS_VALUES))
        else:
            parts.append(name)
    return parts[0] if len(parts) == 1 else b"\n".join(parts)


# ---------------------------------------------------------------- cache key


def _bytes(value: Union[str, bytes]) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def _name_set(names: Collection[Union[str, bytes]]) -> Collection[bytes]:
    if isinstance(names, frozenset):
        return names  # pass a frozenset of bytes to skip the conversion
    return {_bytes(name) for name in names}


def _param_name(param: bytes) -> bytes:
    return param.partition(b"=")[0]


def cache_key(
    host: bytes,
    path: bytes,
    query: bytes,
    *,
    scheme: bytes = b"http",
    query_mode: Union[str, Collection[Union[str, bytes]]] = "all",
    ignore_query: Collection[Union[str, bytes]] = (),
    header_names: Sequence[Union[str, bytes]] = (),
    request_headers: Optional[Headers] = None,
    lowered: Optional[List[bytes]] = None,
) -> bytes:
    """The primary cache key: ``scheme://host/path?query`` plus chosen request fields.

    The host is lower-cased without the scheme's default port; the scheme
    is kept (an http->https redirect must not be served over https).  The
    query (with or without its ``?``) keeps, for ``"all"``, every parameter
    not in ``ignore_query``; for ``"none"``, nothing; for a list, only the
    listed names.  Kept parameters are sorted by name, stably (parameters of
    the same name keep their order), so reordered queries share an entry;
    names are compared as sent (no percent-decoding).  ``header_names`` add
    the normalised values of those request fields (as :func:`variant_key`).
    """
    host = host.lower()
    if scheme == b"https":
        if host.endswith(b":443"):
            host = host[:-4]
    elif host.endswith(b":80"):
        host = host[:-3]
    if host.endswith(b"."):
        host = host[:-1]
    if query[:1] == b"?":
        query = query[1:]
    if query and query_mode != "none":
        params = query.split(b"&")
        if query_mode != "all":
            if isinstance(query_mode, str):
                raise ValueError("query_mode must be 'all', 'none' or a list of names, not %r" % query_mode)
            keep = _name_set(query_mode)
            params = [param for param in params if param and param.partition(b"=")[0] in keep]
        elif ignore_query:
            drop = _name_set(ignore_query)
            params = [param for param in params if param and param.partition(b"=")[0] not in drop]
        elif b"" in params:
            params = [param for param in params if param]
        if len(params) > 1:
            params.sort(key=_param_name)
        query = b"&".join(params)
    else:
        query = b""
    key = scheme + b"://" + host + path + (b"?" + query if query else b"")
    if header_names and request_headers is not None and lowered is not None:
        key += b"\n" + variant_key([_bytes(name).lower() for name in header_names], request_headers, lowered)
    return key


# ------------------------------------------------------------- invalidation


def invalidates(method: bytes, status: int) -> bool:
    """Does this exchange invalidate the target URI (RFC 9111 4.4)?  Unsafe method, 2xx/3xx."""
    return method not in SAFE_METHODS and 200 <= status < 400


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(uri: str) -> Tuple[str, Optional[str], Optional[int]]:
    """``(scheme, host, port)`` of an absolute URI, the port defaulted (RFC 9110 4.3.1)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(scheme)


def invalidation_targets(
    request_host: bytes,
    scheme: bytes,
    response_headers: Headers,
    lowered: List[bytes],
    request_target: bytes = b"/",
) -> List[bytes]:
    """The other URIs an unsafe request invalidates (RFC 9111 4.4), in origin-form.

    Location and Content-Location, resolved against the request URI, when
    they have the origin of the request (scheme, host and port); the target
    URI itself is not listed.
    """
    base = "%s://%s%s" % (scheme.decode("latin-1"), request_host.decode("latin-1"), request_target.decode("latin-1"))
    targets: List[bytes] = []
    try:
        origin = _origin(base)
    except ValueError:
        return targets
    for name in (b"location", b"content-location"):
        value = first_value(response_headers, lowered, name)
        if not value:
            continue
        try:
            uri = urljoin(base, value.decode("latin-1"))
            if _origin(uri) != origin:
                continue
            parts = urlsplit(uri)
        except ValueError:
            continue
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        encoded = target.encode("latin-1")
        if encoded not in targets:
            targets.append(encoded)
    return targets
