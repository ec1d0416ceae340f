"""Content codings for :mod:`speedproxy.edge.compression`: negotiation and compressors.

gzip comes with Python (``zlib``); brotli needs the ``brotli`` package (the
``speedproxy[brotli]`` extra) and is offered only when it imports.
"""

from __future__ import annotations

import zlib
from typing import Any, Dict, Optional, Tuple

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


class _Gzip:
    """A streaming gzip compressor (``compress`` pieces, then ``finish``)."""

    __slots__ = ("_z",)

    def __init__(self, level: int) -> None:
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)

    def compress(self, data: Any) -> bytes:
        return self._z.compress(data)

    def finish(self) -> bytes:
        return self._z.flush()


class _Brotli:
    """A streaming brotli compressor."""

    __slots__ = ("_c",)

    def __init__(self, level: int) -> None:
        self._c = _brotli.Compressor(quality=level)

    def compress(self, data: Any) -> bytes:
        return self._c.process(bytes(data))

    def finish(self) -> bytes:
        return self._c.finish()


def compressor(coding: bytes, gzip_level: int, brotli_level: int) -> Any:
    """A streaming compressor for ``coding`` (``compress(data)``, ``finish()``)."""
    if coding == BR:
        return _Brotli(brotli_level)
    return _Gzip(gzip_level)


def compress(coding: bytes, body: bytes, gzip_level: int, brotli_level: int) -> bytes:
    """``body`` compressed whole with ``coding``."""
    if coding == BR:
        return _brotli.compress(body, quality=brotli_level)
    z = zlib.compressobj(gzip_level, zlib.DEFLATED, 31)
    return z.compress(body) + z.flush()
