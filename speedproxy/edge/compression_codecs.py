"""Content codings for :mod:`speedproxy.edge.compression`: negotiation and compressors.

gzip comes with Python (``zlib``); brotli needs the ``brotli`` package (the
``speedproxy[brotli]`` extra) and is offered only when it imports.

**Small bodies, small gzip state.**  zlib's default stream (a 32 KiB
window, ``memLevel`` 8) allocates some 256 KiB and clears 64 KiB of it for
every answer; when the allocator gives that memory back to the system
between answers, it is faulted in again each time (then 1 KiB costs about
50 µs to compress instead of 7).  As nginx's gzip filter does, a body whose
length is known gets the smallest window that still holds all of it, and a
``memLevel`` one smaller per halving (:func:`gzip_sizes`): the output is
as valid and, the whole body being in the window, as small within a few
bytes; the level is the operator's.  A body of unknown length (or of about
16 KiB or more) gets zlib's defaults.  A short body of known length is
compressed in one call when it has all arrived (:class:`WholeBody`).
brotli is left at its defaults: its
encoder already sets up only what a short final input needs, and a window
of 64 KiB or less would make qualities 5-9 use another, slower, match
finder (twice the instructions for 1 KiB at quality 5).
"""

from __future__ import annotations

import zlib
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

GZIP = b"gzip"
BR = b"br"

try:  # the optional extra
    import brotli as _brotli
except ImportError:  # pragma: no cover - depends on the installation
    _brotli = None


def brotli_available() -> bool:
    """Is the ``brotli`` package installed?"""
    return _brotli is not None


def _quality(text: bytes) -> float:
    try:
        value = float(text)
    except ValueError:
        return 0.0
    return value if 0.0 <= value <= 1.0 else 0.0


def parse_accept_encoding(value: bytes) -> Dict[bytes, float]:
    """``Accept-Encoding`` as ``{coding: q}`` (RFC 9110 12.5.3), codings lower-cased.

    ``x-gzip`` counts as ``gzip``; a malformed ``q`` counts as 0 (not acceptable).
    """
    weights: Dict[bytes, float] = {}
    for member in value.split(b","):
        coding, _, params = member.partition(b";")
        coding = coding.strip().lower()
        if not coding:
            continue
        if coding == b"x-gzip":
            coding = GZIP
        q = 1.0
        for param in params.split(b";"):
            name, _, raw = param.partition(b"=")
            if name.strip().lower() == b"q":
                q = _quality(raw.strip())
        weights[coding] = max(q, weights.get(coding, 0.0)) if coding in weights else q
    return weights


_chosen: Dict[Tuple[bytes, bool], Optional[bytes]] = {}


def negotiate(value: Optional[bytes], offer_brotli: bool) -> Optional[bytes]:
    """The coding to send for an ``Accept-Encoding`` value: ``b"br"``,
    ``b"gzip"`` or ``None`` (identity).

    The highest ``q`` wins; on a tie brotli is preferred (smaller).  ``*``
    stands for every coding not named.  Answers are memoised per value.
    """
    if not value:
        return None
    memo_key = (value, offer_brotli)
    try:
        return _chosen[memo_key]
    except KeyError:
        pass
    weights = parse_accept_encoding(value)
    star = weights.get(b"*", 0.0)
    best: Optional[bytes] = None
    best_q = 0.0
    for coding in ((BR, GZIP) if offer_brotli else (GZIP,)):
        q = weights.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    if len(_chosen) >= 1024:
        _chosen.clear()
    _chosen[memo_key] = best
    return best


#: zlib's largest window (32 KiB) and its default ``memLevel``.
_MAX_WBITS, _MEMLEVEL = 15, 8
#: zlib keeps this much of its window for lookahead (``MIN_LOOKAHEAD``).
_LOOKAHEAD = 262


def gzip_sizes(length: Optional[int]) -> Tuple[int, int]:
    """``(windowBits, memLevel)`` for a body of ``length`` bytes (``None``: unknown).

    As ``ngx_http_gzip_filter_module``: the window is halved (and
    ``memLevel`` lowered by one) while the body still fits in what is left
    of it for matches; never below 9 bits (what the gzip wrapper allows) or
    ``memLevel`` 1.
    """
    if not length:
        return _MAX_WBITS, _MEMLEVEL
    # (nginx halves while ``length < 2**(wbits - 1) - 262``: what it ends
    # with is the bit length of ``length + 262``, at least 9.)
    wbits = (length + _LOOKAHEAD).bit_length()
    if wbits >= _MAX_WBITS:
        return _MAX_WBITS, _MEMLEVEL
    return wbits, _MEMLEVEL - (_MAX_WBITS - wbits)


def _gzip_stream(level: int, length: Optional[int]) -> Any:
    wbits, memlevel = gzip_sizes(length)
    return zlib.compressobj(level, zlib.DEFLATED, 16 + wbits, memlevel)


class _Gzip:
    """A streaming gzip compressor (``compress`` pieces, then ``finish``);
    ``length``: the body's, when known (sizes the stream, :func:`gzip_sizes`).

    ``compress`` and ``finish`` are the zlib object's own methods (no
    Python frame between the filter and the C code), except for a body
    short enough for a sized window: its output is kept until ``finish``,
    as brotli keeps a short input, so the answer does not go out as its
    head and zlib's 10-byte gzip header first, then the rest.
    """

    __slots__ = ("compress", "finish", "_stream", "_held")

    def __init__(self, level: int, length: Optional[int] = None) -> None:
        wbits, memlevel = gzip_sizes(length)
        stream = zlib.compressobj(level, zlib.DEFLATED, 16 + wbits, memlevel)
        if wbits < _MAX_WBITS:
            self._stream = stream
            self._held: List[bytes] = []
            self.compress = self._hold
            self.finish = self._finish_held
        else:
            self.compress = stream.compress
            self.finish = stream.flush

    def _hold(self, data: Any) -> bytes:
        out = self._stream.compress(data)
        if out:
            self._held.append(out)
        return b""

    def _finish_held(self) -> bytes:
        held = self._held
        held.append(self._stream.flush())
        return b"".join(held)


class _Brotli:
    """A streaming brotli compressor (the brotli object's own methods; it takes
    any bytes-like piece, a ``memoryview`` too)."""

    __slots__ = ("compress", "finish")

    def __init__(self, level: int) -> None:
        stream = _brotli.Compressor(quality=level)
        self.compress = stream.process
        self.finish = stream.finish


def compressor(coding: bytes, gzip_level: int, brotli_level: int, length: Optional[int] = None) -> Any:
    """A streaming compressor for ``coding`` (``compress(data)``, ``finish()``)
    of a body of ``length`` bytes (``None``: unknown)."""
    if coding == BR:
        return _Brotli(brotli_level)
    return _Gzip(gzip_level, length)


def compress(coding: bytes, body: Any, gzip_level: int, brotli_level: int) -> bytes:
    """``body`` (any bytes-like object) compressed whole with ``coding``."""
    if coding == BR:
        return _brotli.compress(body, quality=brotli_level)
    z = _gzip_stream(gzip_level, len(body))
    return z.compress(body) + z.flush()


#: Bodies of a known length up to this are compressed in one call (:class:`WholeBody`).
WHOLE_BODY_MAX = 64 * 1024


class WholeBody:
    """A compressor for a short body of known length: its pieces (mostly
    one) are kept and compressed in one call when it ends (``compress``
    returns nothing), so the answer leaves whole, with its length.

    ``encode(body)`` compresses a whole body (bytes or a ``memoryview`` of
    immutable bytes: pieces are kept until the end, not copied).
    """

    __slots__ = ("_pieces", "_encode")

    def __init__(self, encode: Any) -> None:
        self._pieces: List[Any] = []
        self._encode = encode

    def compress(self, data: Any) -> bytes:
        self._pieces.append(data)
        return b""

    def finish(self) -> bytes:
        pieces = self._pieces
        if len(pieces) == 1:
            return self._encode(pieces[0])
        return self._encode(b"".join(pieces))


def whole_body_encoder(coding: bytes, gzip_level: int, brotli_level: int) -> Any:
    """``encode(body)`` for :class:`WholeBody`."""
    if coding == BR:
        return partial(_brotli_whole, _brotli.Compressor, brotli_level)
    return partial(compress, GZIP, gzip_level=gzip_level, brotli_level=brotli_level)


def _brotli_whole(make: Any, quality: int, body: Any) -> bytes:
    """``brotli.compress(body, quality=quality)`` without its Python wrapper's keyword handling."""
    stream = make(quality=quality)
    out = stream.process(body)
    return out + stream.finish() if out else stream.finish()
