"""The canonical form of a signed URL's query: the part of the query a signature covers.

With ``signed_urls: {query: signed}`` (the default) the signature covers
the query as well as the path.  Players, libraries and hand-written code
put the same parameters in different orders and percent-encode them
differently, so what is signed is not the query as written but its
canonical form, made from the raw query string (without the ``?``):

1. split it on ``&``; drop empty pieces;
2. drop the parameters the signature does not cover, recognised by their
   name exactly as written (:func:`unsigned_names`): the signature's own
   (``param_signature``, ``param_expires``), the route's session parameter
   (``sessions.cookie``) and, on a route with ``hls.enabled``, the LL-HLS
   delivery directives players add themselves (``_HLS_msn``, ``_HLS_part``,
   ``_HLS_skip``);
3. split each piece at its first ``=`` into a name and a value (no ``=``:
   an empty value), and write each of them in normal form: every ``%XX``
   decoded, then every byte but the unreserved ones (``A-Z a-z 0-9 - . _
   ~``) written ``%XX`` in upper-case hex, except ``+``, which stays ``+``
   (``+`` and ``%2B`` differ to form decoders, ``+`` and ``%20`` to the
   others, so ``+`` is equal to neither);
4. join each name and value with ``=``, sort the pieces by name (byte
   order; pieces of the same name keep their order: which of two values
   of one name comes first is covered, since backends differ on which one
   they read), and join them with ``&``.

In Python::

    from urllib.parse import quote, unquote_to_bytes

    def normal(text):
        return "+".join(quote(unquote_to_bytes(part), safe="") for part in text.split("+"))

    def canonical(query, unsigned=("exp", "sig")):
        pieces = []
        for piece in query.split("&"):
            name, _, value = piece.partition("=")
            if piece and name not in unsigned:
                pieces.append((normal(name), normal(value)))
        return "&".join(name + "=" + value for name, value in sorted(pieces, key=lambda p: p[0]))

A query made only of unreserved characters and ``=``/``&`` is already in
normal form: its canonical form is its pieces sorted by name
(``LC_ALL=C sort -s -t= -k1,1``).  The signed message is the path, a ``?``
and the canonical query when it is not empty (the path alone when it is:
a link without parameters is signed as before), then the expiry (and the
client address) on lines of their own (:mod:`speedproxy.edge.signed_urls`).
"""

from __future__ import annotations

import re
from typing import Any, Collection, Dict, FrozenSet

#: LL-HLS delivery directives (RFC 8216bis 6.2.5.2), added by players to the
#: playlist URLs they were given: never covered on an HLS route (the names of
#: ``speedproxy.hls.filter.LL_HLS_DIRECTIVES``, not imported: no HLS code on this path).
LL_HLS_DIRECTIVES = (b"_HLS_msn", b"_HLS_part", b"_HLS_skip")

#: A piece already in canonical form (``name=value`` of unreserved characters), and a query of them only.
_PLAIN = re.compile(rb"[A-Za-z0-9._~-]+=[A-Za-z0-9._~-]*\Z")
_ALL_PLAIN = re.compile(rb"[A-Za-z0-9._~-]+=[A-Za-z0-9._~-]*(?:&[A-Za-z0-9._~-]+=[A-Za-z0-9._~-]*)*\Z")

#: What :func:`normal` rewrites: a ``%XX``, or one byte that is neither unreserved nor ``+``.
_TOKEN = re.compile(rb"%[0-9A-Fa-f]{2}|[^A-Za-z0-9._~+-]")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _normal_forms() -> Dict[bytes, bytes]:
    """Every token :data:`_TOKEN` finds, and its normal form (made once: no per-byte work per request)."""
    forms = {}
    for value in range(256):
        encoded = b"%%%02X" % value
        forms[bytes((value,))] = encoded  # (the unreserved ones and + are never matched alone)
        decoded = bytes((value,)) if value in _UNRESERVED else encoded
        high, low = b"%X" % (value >> 4), b"%X" % (value & 15)
        for first in {high, high.lower()}:
            for second in {low, low.lower()}:
                forms[b"%" + first + second] = decoded
    return forms


_FORMS = _normal_forms()


def _form(match: "re.Match[bytes]") -> bytes:
    return _FORMS[match.group()]


def normal(text: bytes) -> bytes:
    """``text`` (a name or a value as written) with its percent-encoding in normal form.

    The same as ``"+".join(quote(unquote_to_bytes(part), safe="") for part in
    text.split("+"))``, in one pass.
    """
    return _TOKEN.sub(_form, text)


def _name(piece: bytes) -> bytes:
    return piece.partition(b"=")[0]


def canonical_query(query: bytes, unsigned: Collection[bytes] = ()) -> bytes:
    """The canonical form of ``query`` (raw, without ``?``), the ``unsigned`` names left out."""
    plain = _ALL_PLAIN.match(query) is not None  # the common case: nothing to rewrite
    pieces = []
    for piece in query.split(b"&"):
        if not piece:
            continue
        name, _, value = piece.partition(b"=")
        if name in unsigned:
            continue
        if not plain and _PLAIN.match(piece) is None:
            piece = normal(name) + b"=" + normal(value)
        pieces.append(piece)
    if len(pieces) > 1:
        pieces.sort(key=_name)  # (a stable sort: one name's values keep their order)
    return b"&".join(pieces)


def unsigned_names(route: Any) -> FrozenSet[bytes]:
    """The query parameters of ``route`` (a ``RouteConfig``) no signature covers."""
    settings = route.signed_urls
    names = {settings.param_signature.encode("ascii"), settings.param_expires.encode("ascii")}
    sessions = getattr(route, "sessions", None)
    if sessions is not None:
        names.add(sessions.cookie.encode("ascii"))
    hls = getattr(route, "hls", None)
    if hls is not None and hls.enabled:
        names.update(LL_HLS_DIRECTIVES)
    return frozenset(names)
