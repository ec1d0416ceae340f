"""``signed_urls``: a route only answers URLs signed with its key, until they expire.

A signed URL carries two query parameters (``param_expires``, default
``exp``: a Unix time; ``param_signature``, default ``sig``)::

    /hls/live/index.m3u8?exp=1767225600&sig=<hex HMAC-SHA256>

The signature is the lower-case hex HMAC-SHA256, keyed with a secret, of
the request path (normalised, as routed), followed by ``?`` and the
canonical form of the other query parameters when there are some
(:mod:`speedproxy.edge.canonical_query`), and the expiry, joined by a line
feed, and of the client address too (a third line) with
``bind_client_ip``::

    HMAC-SHA256(secret, "/hls/live/index.m3u8\\n1767225600")
    HMAC-SHA256(secret, "/v/movie.ts?lang=en&quality=hd\\n1767225600")

Adding, removing or changing a covered parameter is then a
``signature_invalid``; reordering parameters of different names is not.
With ``query: ignore`` the signature covers the path only (parameters may
be added or changed by anyone holding the link).

The first of ``secrets`` signs (``POST /api/v1/sign``), every one verifies
(rotation: add the new key first, drop the old one when its URLs have
expired).  Signatures are compared in constant time.  Missing, bad or
expired: 403 whose JSON ``error`` says which (``signature_missing``,
``signature_invalid``, ``signature_expired``), counted as
``speedproxy_refused_total{reason="signature"}``.

Both parameters are taken off the request before anything else sees it: the
cache key, the HLS filters and the backend get the URL without them.

With ``hls.enabled``, a playlist answered to a signed request has its URIs
signed in turn (same expiry, same client address), each with the settings
of the route it leads to and with the query it carries, so a player can
follow them: the cache keeps the playlist unsigned and it is signed per
answer.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from typing import Any, Dict, FrozenSet, List, Optional, Tuple
from urllib.parse import urljoin

from speedproxy.config.model import SignedUrlsConfig
from speedproxy.edge import is_internal
from speedproxy.edge.canonical_query import canonical_query, unsigned_names
from speedproxy.edge.ip_lists import parse_address
from speedproxy.edge.refusals import refuse
from speedproxy.filters.base import Filter
from speedproxy.filters.messages import FilterRequest, FilterResponse, LocalResponse

#: ``view.state`` key of a request whose signature was valid: ``(expires, client_ip or None)``.
SIGNED = "edge.signed"
_BODY = "edge.signed.body"

#: Longest playlist signed (larger ones go out as they are).
MAX_PLAYLIST = 8 * 1024 * 1024
#: Verified signed URLs remembered per filter (:meth:`SignedUrlFilter.request`).
VERIFIED_MEMO = 4096
#: Longest request target remembered (bytes).
VERIFIED_TARGET = 1024


# -- signatures -----------------------------------------------------------------------


def canonical_ip(text: str) -> str:
    """The form of a client address a bound signature covers (IPv4-mapped as IPv4)."""
    address = parse_address(text)
    return str(address) if address is not None else text


def _text(path: str, expires: int, client_ip: Optional[str], canonical: str = "") -> str:
    """The signed message: path (``?`` and the canonical query), expiry (and client address), one a line."""
    if canonical:
        path = path + "?" + canonical
    return f"{path}\n{expires}" if client_ip is None else f"{path}\n{expires}\n{canonical_ip(client_ip)}"


def _canonical(settings: SignedUrlsConfig, query: str, unsigned: Optional[FrozenSet[bytes]]) -> str:
    if settings.query != "signed" or not query:
        return ""
    names = unsigned if unsigned is not None else _own_names(settings)
    return canonical_query(query.encode("latin-1"), names).decode("ascii")


def _own_names(settings: SignedUrlsConfig) -> FrozenSet[bytes]:
    return frozenset((settings.param_signature.encode("ascii"), settings.param_expires.encode("ascii")))


def signature(secret: str, path: str, expires: int, client_ip: Optional[str] = None, query: str = "") -> str:
    """The hex HMAC-SHA256 of ``path`` (and ``query``, every parameter of it
    covered, in canonical form), ``expires`` (and ``client_ip``) under ``secret``."""
    canonical = canonical_query(query.encode("latin-1")).decode("ascii") if query else ""
    message = _text(path, expires, client_ip, canonical)
    return hmac.digest(secret.encode("utf-8"), message.encode("utf-8"), "sha256").hex()


def signed_query(
    settings: SignedUrlsConfig,
    path: str,
    expires: int,
    client_ip: Optional[str] = None,
    query: str = "",
    unsigned: Optional[FrozenSet[bytes]] = None,
) -> str:
    """``exp=...&sig=...`` for ``path`` and ``query`` (as written, without
    ``?``) signed with the first secret; ``unsigned``: the names the route's
    signatures do not cover (:func:`~speedproxy.edge.canonical_query.unsigned_names`;
    the signature parameters when left out)."""
    ip = client_ip if settings.bind_client_ip else None
    canonical = _canonical(settings, query, unsigned)
    message = _text(path, expires, ip, canonical)
    sig = hmac.digest(settings.secrets[0].encode("utf-8"), message.encode("utf-8"), "sha256").hex()
    return f"{settings.param_expires}={expires}&{settings.param_signature}={sig}"


def verify(settings: SignedUrlsConfig, path: str, expires: int, sig: str, client_ip: str, query: str = "") -> bool:
    """Does ``sig`` (hex) sign ``path``/``query``/``expires`` (and ``client_ip`` when bound) under any secret?"""
    if len(sig) != 64:
        return False
    try:
        given = bytes.fromhex(sig)
    except ValueError:
        return False
    ip = client_ip if settings.bind_client_ip else None
    message = _text(path, expires, ip, _canonical(settings, query, None)).encode("utf-8")
    ok = False
    for secret in settings.secrets:
        # Every secret is tried, each compared in constant time.
        ok |= hmac.compare_digest(hmac.digest(secret.encode("utf-8"), message, "sha256"), given)
    return ok


class _Key:
    """HMAC-SHA256 (RFC 2104) under one key, its padded inner and outer hashes
    made once: a message costs two hash copies, with no Python-level
    ``hmac.HMAC`` object per request."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


#: SHA-256's block size, and the HMAC pads as translation tables (byte XOR 0x36 / 0x5C).
_BLOCK = 64
_IPAD = bytes(value ^ 0x36 for value in range(256))
_OPAD = bytes(value ^ 0x5C for value in range(256))


class Signer:
    """A route's keys, made ready once (:class:`_Key`), and what its signatures cover.

    ``unsigned``: the query parameters no signature of the route covers
    (:func:`~speedproxy.edge.canonical_query.unsigned_names`; the signature's
    own two when left out).
    """

    __slots__ = ("settings", "_keys", "_bound", "_signs_query", "_unsigned")

    def __init__(self, settings: SignedUrlsConfig, unsigned: Optional[FrozenSet[bytes]] = None) -> None:
        self.settings = settings
        self._keys = tuple(_Key(secret.encode("utf-8")) for secret in settings.secrets)
        self._bound = settings.bind_client_ip
        self._signs_query = settings.query == "signed"
        self._unsigned = unsigned if unsigned is not None else _own_names(settings)

    def canonical(self, query: bytes) -> bytes:
        """What the route's signatures cover of ``query`` (raw, without ``?``): empty with ``query: ignore``."""
        if not query or not self._signs_query:
            return b""
        return canonical_query(query, self._unsigned)

    def _message(self, path: str, expires: int, client_ip: Optional[str], canonical: bytes = b"") -> bytes:
        ip = client_ip if self._bound else None
        return _text(path, expires, ip, canonical.decode("ascii")).encode("utf-8")

    def verify(self, path: str, expires: int, sig: bytes, client_ip: str, query: bytes = b"") -> bool:
        """Does the hex ``sig`` sign this request under any key (each compared in constant time)?

        ``query``: the request's, raw, without ``?``.
        """
        return self._check(self._message(path, expires, client_ip, self.canonical(query)), sig)

    def verify_raw(self, path: bytes, expires: int, sig: bytes, client_ip: str, query: bytes = b"") -> bool:
        """:meth:`verify` for a path as the request holds it (latin-1 bytes)."""
        if self._bound or not path.isascii():
            return self.verify(path.decode("latin-1"), expires, sig, client_ip, query)
        if query and self._signs_query:
            canonical = canonical_query(query, self._unsigned)
            if canonical:
                return self._check(b"%s?%s\n%d" % (path, canonical, expires), sig)
        return self._check(b"%s\n%d" % (path, expires), sig)  # the same message, built as bytes

    def _check(self, message: bytes, sig: bytes) -> bool:
        if len(sig) != 64:
            return False
        try:
            given = bytes.fromhex(sig.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return False
        # Each key's MAC is compared in constant time.  The keys are tried in
        # order and the first match ends the search: how long that takes
        # tells only which key a *valid* signature was made with (something
        # its holder knows), never how close a forged one came.
        for key in self._keys:
            if hmac.compare_digest(key.digest(message), given):
                return True
        return False

    def query(self, path: str, expires: int, client_ip: Optional[str], query: str = "") -> str:
        """``exp=...&sig=...`` for ``path`` and ``query`` (as written, without ``?``), signed with the first key."""
        canonical = self.canonical(query.encode("latin-1")) if query else b""
        mac = self._keys[0].digest(self._message(path, expires, client_ip, canonical))
        settings = self.settings
        return f"{settings.param_expires}={expires}&{settings.param_signature}={mac.hex()}"


def take_params(query: bytes, names: Tuple[bytes, ...]) -> Tuple[bytes, List[List[bytes]]]:
    """``query`` (``?`` included, or empty) without the ``names`` parameters, and their values."""
    values: List[List[bytes]] = [[] for _ in names]
    kept = []
    for part in query[1:].split(b"&"):
        name, _, value = part.partition(b"=")
        if name in names:
            values[names.index(name)].append(value)
        elif part:
            kept.append(part)
    return (b"?" + b"&".join(kept) if kept else b""), values


def _without_params(query: str, names: Tuple[str, str]) -> str:
    parts = [part for part in query.split("&") if part and part.partition("=")[0] not in names]
    return "&".join(parts)


# -- the filter ---------------------------------------------------------------------


class SignedUrlFilter(Filter):
    """Checks the signature of every request of a route.

    On a route with ``hls.enabled`` the filter is a
    :class:`PlaylistSigningFilter`, which also signs the playlists it
    answers; a route without HLS has only the request hook (its answers
    cost the chain nothing).
    """

    #: Playlists of this route are HLS: sign the URIs they list.
    signs_playlists = False

    def __init__(self, core: Any, route: Any, clock: Any) -> None:
        self.core = core
        self.settings: SignedUrlsConfig = route.signed_urls
        self.route = route
        self.signer = Signer(self.settings, unsigned_names(route))
        self.clock = clock
        self._names = (self.settings.param_signature.encode("ascii"), self.settings.param_expires.encode("ascii"))
        self._bound = self.settings.bind_client_ip
        #: Request targets (with the client address when signatures bind it)
        #: whose signature verified, not yet expired -> ``(query, target, expires)``
        #: without the signature parameters (:meth:`request`).
        self._verified: Dict[Any, Tuple[bytes, bytes, int]] = {}

    def request(self, view: FilterRequest) -> Optional[LocalResponse]:
        exchange = view._exchange
        request = exchange.request
        # A signed URL seen before (a player reloading a playlist, a client
        # retrying): its signature is not computed again.  Only URLs whose
        # signature verified are remembered, so a forged one always gets the
        # constant-time comparison (the look-up compares the whole target,
        # by its keyed hash first: nothing about how close a forged signature
        # is); the expiry is checked on every request.
        target = request.target
        memo_key = (target, exchange.client_ip) if self._bound else target
        known = self._verified.get(memo_key)
        if known is not None:
            request.query, request.target, expires = known
            if getattr(exchange.client, "internal", False):  # (is_internal, inline)
                return None
            if expires < self.clock.seconds():
                del self._verified[memo_key]
                return self._expired(view, expires)
            view.state[SIGNED] = (expires, exchange.client_ip)
            return None
        sigs: List[bytes] = []
        exps: List[bytes] = []
        if b"=" in request.query:
            query, (sigs, exps) = take_params(request.query, self._names)
            if query != request.query:
                # Neither the cache key nor the backend sees them.
                request.query = query
                request.target = request.target.partition(b"?")[0] + query
        if is_internal(view):
            return None
        settings = self.settings
        if not sigs or not exps:
            missing = settings.param_signature if not sigs else settings.param_expires
            return self._refuse(view, "signature_missing", f"this URL must be signed (no {missing} parameter)")
        if len(sigs) > 1 or len(exps) > 1:
            return self._refuse(view, "signature_invalid", "the signature parameters are given more than once")
        raw_exp, sig = exps[0], sigs[0]
        if not raw_exp.isdigit() or len(raw_exp) > 12:
            return self._refuse(view, "signature_invalid", f"{settings.param_expires} must be a Unix time")
        expires = int(raw_exp)
        if not self.signer.verify_raw(request.path, expires, sig, exchange.client_ip, request.query[1:]):
            return self._refuse(view, "signature_invalid", "the signature does not match this URL")
        if expires < self.clock.seconds():
            return self._expired(view, expires)
        if len(target) <= VERIFIED_TARGET:
            verified = self._verified
            if len(verified) >= VERIFIED_MEMO:
                verified.clear()
            verified[memo_key] = (request.query, request.target, expires)
        view.state[SIGNED] = (expires, exchange.client_ip)
        return None

    def _expired(self, view: FilterRequest, expires: int) -> LocalResponse:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        return self._refuse(view, "signature_expired", f"this signed URL expired at {stamp}")

    def _refuse(self, view: FilterRequest, code: str, detail: str) -> LocalResponse:
        return refuse(self.core, view, "signature", 403, code, detail)


class PlaylistSigningFilter(SignedUrlFilter):
    """:class:`SignedUrlFilter` of an HLS route: playlists answered to a
    signed request list signed URIs."""

    signs_playlists = True
    wants_body = True

    def __init__(self, core: Any, route: Any, clock: Any) -> None:
        super().__init__(core, route, clock)
        #: (host, path, expiry, address, unsigned body) -> signed body, oldest first.
        self._signed: "dict[tuple, bytes]" = {}
        self._signed_bytes = 0
        #: Whether signatures depend on the client's address (decided on first use).
        self._bound: Optional[bool] = None

    # -- signing playlists (HLS routes) ---------------------------------------------------

    def _is_playlist(self, view: FilterRequest, content_type: Optional[bytes]) -> bool:
        from speedproxy.hls.playlist import is_playlist_path, is_playlist_type

        return is_playlist_path(view._exchange.request.path) or is_playlist_type(content_type)

    def response_head(self, view: FilterRequest, response: FilterResponse) -> None:
        state = view.state
        if not self.signs_playlists or SIGNED not in state or response.status != 200:
            return None
        if view._exchange.request.method != b"GET":
            return None
        head = response._head
        content_type = head.headers[head.lowered.index(b"content-type")][1] if b"content-type" in head.lowered else None
        if not self._is_playlist(view, content_type) or b"content-encoding" in head.lowered:
            return None  # (an encoded playlist cannot be read here: sent as it is)
        if head.content_length is not None and head.content_length > MAX_PLAYLIST:
            return None
        head.content_length = None  # signed URIs change its length: chunked
        state[_BODY] = []
        return None

    def response_body(self, view: FilterRequest, data: bytes) -> bytes:
        chunks = view.state.get(_BODY)
        if chunks is None:
            return data
        chunks.append(bytes(data))
        return b""

    def response_end(self, view: FilterRequest) -> Optional[bytes]:
        chunks = view.state.pop(_BODY, None)
        if chunks is None:
            return None
        return self.sign_playlist(view, b"".join(chunks))

    def local_response(self, view: FilterRequest, response: LocalResponse) -> None:
        """A playlist answered from the cache (stored unsigned) is signed for this request."""
        if not self.signs_playlists or SIGNED not in view.state or response.status != 200:
            return
        if not self._is_playlist(view, _field(response, b"content-type")):
            return
        if _field(response, b"content-encoding") is not None:
            return  # a compressed copy: cannot be read here
        file = response.file
        if file is not None:
            if file.length > MAX_PLAYLIST:
                return
            response.body = os.pread(file.fd, file.length, file.offset)
            close = getattr(file.keep, "close", None)
            if close is not None:
                close()
            response.file = None
        if len(response.body) <= MAX_PLAYLIST:
            response.body = self.sign_playlist(view, response.body)

    def sign_playlist(self, view: FilterRequest, body: bytes) -> bytes:
        """``body`` with its URIs signed for this request's expiry and address.

        The players of one signed link (same expiry, and address when bound)
        get the same signed playlist: the last few are kept, so a playlist
        hit costs its signing once per link, not once per answer.
        """
        expires, client_ip = view.state[SIGNED]
        request = view._exchange.request
        memo = self._signed
        if self._bound is None:  # does any route sign for the client's address?
            routes = getattr(self.core.router, "routes", ())
            self._bound = any(
                getattr(getattr(route.config, "signed_urls", None), "bind_client_ip", True) for route in routes
            ) or not routes
        key = (request.host, request.path, expires, client_ip if self._bound else None, body)
        signed = memo.get(key)
        if signed is None:
            signed = self._sign_playlist(view, body)
            size = len(body) + len(signed)
            if size <= SIGNED_PLAYLIST_BYTES:
                while memo and (len(memo) >= SIGNED_PLAYLISTS_KEPT or self._signed_bytes + size > SIGNED_PLAYLIST_BYTES):
                    old_key = next(iter(memo))
                    old = memo.pop(old_key)
                    self._signed_bytes -= len(old_key[4]) + len(old)
                memo[key] = signed
                self._signed_bytes += size
        return signed

    def _sign_playlist(self, view: FilterRequest, body: bytes) -> bytes:
        from speedproxy.hls.rewrite import map_uris
        from speedproxy.proxy.paths import PathError, normalise_path

        expires, client_ip = view.state[SIGNED]
        exchange = view._exchange
        request = exchange.request
        core = self.core
        server = core.server
        own_path = request.path.decode("latin-1")
        base = "http://x" + own_path
        directory = own_path[: own_path.rfind("/") + 1]
        router = core.router
        signers: dict = {}

        def sign(uri: str) -> str:
            if not uri or "://" in uri or uri.startswith("//") or uri.startswith("data:"):
                return uri  # another origin's, or inline: not ours to sign
            rest, hash_mark, fragment = uri.partition("#")
            target, question, query = rest.partition("?")
            if _PLAIN_NAME.match(target) and target != "." and target != "..":
                # A name in the playlist's own directory (``seg00042.ts``): the
                # common case, already a normalised path once joined.
                path = (directory + target).encode("latin-1")
            else:
                try:
                    absolute = urljoin(base, target).split("://x", 1)[1] if target else own_path
                    path = normalise_path(
                        absolute.encode("latin-1"), server.merge_slashes, server.escaped_slashes == "keep"
                    )
                except (PathError, UnicodeEncodeError, IndexError):
                    return uri
            route = router.match(request.host, path)
            config = getattr(route, "config", None)
            settings = getattr(config, "signed_urls", None)
            if settings is None:
                return uri
            signer = self.signer if config is self.route else signers.get(id(config))
            if signer is None:
                signer = signers[id(config)] = Signer(settings, unsigned_names(config))
            kept = _without_params(query, (settings.param_signature, settings.param_expires))
            params = signer.query(path.decode("latin-1"), expires, client_ip, kept)
            query = kept + "&" + params if kept else params
            return target + "?" + query + hash_mark + fragment

        return map_uris(body, sign)


#: Signed playlists a route keeps per worker (see ``sign_playlist``).
SIGNED_PLAYLISTS_KEPT = 32
#: ...and at most this many bytes of them (unsigned and signed bodies).
SIGNED_PLAYLIST_BYTES = 16 * 1024 * 1024

#: A URI that is a plain file name (unreserved characters only, RFC 3986 2.3).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9._~-]+\Z")


def _field(response: LocalResponse, name: bytes) -> Optional[bytes]:
    """A field (lower-case ``name``) of a local answer: its fields, or its serialised block."""
    for given, value in response.headers:
        if given.lower() == name:
            return value
    block = response.block
    if block:
        lowered = block.lower()
        wanted = name + b":"
        start = 0 if lowered.startswith(wanted) else lowered.find(b"\n" + wanted)
        if start > 0:
            start += 1
        if start >= 0:
            end = block.find(b"\r\n", start)
            return block[start + len(wanted) : end if end >= 0 else len(block)].strip()
    return None


def build(core: Any, config: Any, route: Any) -> Optional[SignedUrlFilter]:
    """The filter of ``route`` (``None`` without ``signed_urls``)."""
    if route.signed_urls is None:
        return None
    kind = PlaylistSigningFilter if route.hls.enabled else SignedUrlFilter
    return kind(core, route, core.clock)
