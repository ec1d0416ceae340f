"""Compressed copies of stored responses, kept in the cache tiers.

**Design** (the least intrusive one found; nothing in :mod:`speedproxy.cache`
changes): the cache goes on storing the origin's identity response, as the
HLS filters and range requests need it.  A compressed copy of a stored
object is an object of its own in the same tiers, under the same primary
key and a secondary key made of the object's variant, a NUL and the coding
(``(key, variant + b"\\0gzip")``).  Request variants never contain a NUL
(the proxy refuses one in a header), so a lookup of the cache itself never
meets a copy; a purge, a cross-worker invalidation or a clear of the key
drops its copies with its variants (they share the primary key); the memory
tier counts their bytes against ``cache.memory_size``; the disk tier (when
there is one) shares them with every worker of the host, so a copy is made
once per host.  Each copy records a *stamp* of the object it was made from
(length and strong ``ETag``, else length, ``Last-Modified`` and the time it
was stored): a copy whose stamp no longer matches the stored object (a new
response, or a revalidated one without a strong validator) is made again
and replaces it.

:class:`CompressingCacheFilter` is the route's cache filter when the route
compresses: it only overrides :meth:`CacheFilter.answer` (to note the
stored object an answer comes from) and adds :meth:`encode_answer`, which
the route's compression filter calls from its ``local_response`` hook.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, Hashable, Optional, Tuple

from twisted.logger import Logger

from speedproxy.cache.entry import _PER_ANSWER, CachedObject
from speedproxy.cache.filter import CacheFilter
from speedproxy.edge.compression import (
    ANSWERED,
    COPY_HIT,
    COPY_MADE,
    STREAM,
    CompressionPolicy,
    count,
    encoded_headers,
    varies_on_encoding,
    weak_etag,
)
from speedproxy.filters.messages import LocalResponse

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.exchange import Exchange

log = Logger(namespace="speedproxy.edge")

_META = b"SPZCOPY1\n"
#: Stored objects larger than this are answered uncompressed from the cache
#: (compressing them whole would hold the worker too long).
MAX_COPY_SOURCE = 8 * 1024 * 1024
_VARY_LINE = b"Vary: Accept-Encoding\r\n"
#: Stored heads whose compression facts are remembered per route.
FACTS_MEMO = 256


class CompressedCopy:
    """One compressed copy: the stamp of its source, its body and its head lines."""

    __slots__ = ("stamp", "body", "source_block", "block")

    def __init__(self, stamp: bytes, body: bytes) -> None:
        self.stamp = stamp
        self.body = body
        #: The source's stored head lines and the copy's (memoised per head).
        self.source_block = b""
        self.block = b""


def stamp_of(entry: CachedObject) -> bytes:
    """What identifies the stored body a copy is made from."""
    etag = entry.header(b"etag")
    if etag and not etag.startswith((b"W/", b"w/")):
        return b"%d\n%s" % (entry.length, etag)
    modified = entry.header(b"last-modified") or b""
    return b"%d\n%s\n%r" % (entry.length, modified, entry.policy.response_time)


def _copy_variant(entry: CachedObject, coding: bytes) -> bytes:
    return entry.variant + b"\0" + coding


class CopyStore:
    """Compressed copies in a worker's cache tiers (``core.cache``)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def get(self, entry: CachedObject, coding: bytes, stamp: bytes) -> Optional[CompressedCopy]:
        tiers = self.core.cache
        if tiers is None:
            return None
        variant = _copy_variant(entry, coding)
        memory_key: Hashable = (entry.key, variant)
        found = tiers.memory.get(memory_key)
        if isinstance(found, CompressedCopy):
            return found if found.stamp == stamp else None
        disk = tiers.disk
        if disk is None:
            return None
        stored = disk.get(entry.key, variant)
        if stored is None:
            return None
        with stored:
            meta = stored.meta
            if not meta.startswith(_META) or meta[len(_META):] != stamp:
                return None
            copy = CompressedCopy(stamp, stored.read_body())
        tiers.memory.put(memory_key, copy, len(copy.body) + len(entry.key) + len(variant) + 200)
        return copy

    def put(self, entry: CachedObject, coding: bytes, copy: CompressedCopy) -> None:
        tiers = self.core.cache
        if tiers is None:
            return
        variant = _copy_variant(entry, coding)
        tiers.memory.put((entry.key, variant), copy, len(copy.body) + len(entry.key) + len(variant) + 200)
        disk = tiers.disk
        if disk is not None:
            try:
                disk.put(entry.key, variant, _META + copy.stamp, copy.body)
            except Exception:  # the disk tier never stops proxying
                log.failure("compression: storing a copy of {key!r} on disk failed", key=entry.key)


def _weaken_block(block: bytes) -> bytes:
    """Stored head lines with a strong ``ETag`` made weak (a 304 to a compressed copy)."""
    lines = block.split(b"\r\n")
    for index, line in enumerate(lines):
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"etag":
            lines[index] = name + b": " + weak_etag(value)
    return b"\r\n".join(lines)


class CompressingCacheFilter(CacheFilter):
    """The cache of a route that compresses.

    Every answer from the cache goes through :meth:`CacheFilter.answer`
    (hits, stale, revalidated, coalesced followers answered from the
    cache): this one notes which stored object an answer was made from
    (``view.state[ANSWERED]``).  The route's
    :class:`~speedproxy.edge.compression.CompressionFilter`, whose
    ``local_response`` hook runs after every other filter's, then calls
    :meth:`encode_answer`: so a filter that rewrites a stored body per
    answer (signed URIs in a playlist) does it on the identity body, and
    that answer is compressed on its own; an answer left as stored is sent
    from the kept copy.
    """

    def __init__(self, core: Any, route: str, settings: Any, policy: CompressionPolicy) -> None:
        super().__init__(core, route, settings)
        self.policy = policy
        self.copies = CopyStore(core)
        #: id(stored head lines) -> (the objects the facts were worked out
        #: from, the facts): see :meth:`_facts`.
        self._facts_of: Dict[int, Tuple[Any, ...]] = {}

    def _facts(self, entry: CachedObject) -> Tuple[bool, bytes, bytes]:
        """``(compressible, Vary line to add, stamp)`` of a stored object.

        Remembered per stored head: the memo holds the head's own objects
        (lines, fields, policy; never a body), so an identical one is the
        same head, and a head changed by a refresh is worked out again.
        """
        block = entry.block
        known = self._facts_of.get(id(block))
        if (
            known is not None
            and known[0] is block
            and known[1] is entry.headers
            and known[2] is entry.lowered
            and known[3] is entry.policy
            and known[4] == entry.status
            and known[5] == entry.length
        ):
            return known[6]
        facts = (
            self.policy.compressible(entry.status, entry.headers, entry.lowered, entry.length),
            b"" if varies_on_encoding(entry.headers, entry.lowered) else _VARY_LINE,
            stamp_of(entry),
        )
        if len(self._facts_of) >= FACTS_MEMO:
            self._facts_of.clear()
        self._facts_of[id(block)] = (block, entry.headers, entry.lowered, entry.policy, entry.status, entry.length, facts)
        return facts

    def answer(
        self,
        exchange: "Exchange",
        entry: CachedObject,
        now: float,
        status_value: bytes,
        client_head: Optional[Tuple[Any, Any]] = None,
    ) -> LocalResponse:
        response = super().answer(exchange, entry, now, status_value, client_head)
        view = exchange.view
        if view is not None and self.policy.eligible(exchange.request):
            view.state[ANSWERED] = (self, response, entry, response.body, response.file)
        return response

    def encode_answer(
        self, exchange: "Exchange", coding: Optional[bytes], response: LocalResponse, entry: CachedObject, unchanged: bool
    ) -> None:
        """Make ``response`` (made from ``entry``) the answer for a client accepting ``coding``."""
        status = response.status
        if status != 200 and status != 304:
            return  # 206, 412, 416: left as they are
        compressible, vary, stamp = self._facts(entry)
        if not compressible:
            return
        block = entry.block
        if coding is None or entry.length > MAX_COPY_SOURCE:
            response.block += vary
            return
        if status == 304:
            response.block = _weaken_block(response.block) + vary
            return
        if not response.block.startswith(block):
            return  # not the stored head as is: leave it
        extra = response.block[len(block):]
        if unchanged:
            copy = self._copy(exchange, entry, coding, stamp)
            body = copy.body
        else:
            # Another filter made this body for this answer only (a signed
            # playlist): compressed for it alone.
            body = response.body
            if response.file is not None:
                file = response.file
                body = os.pread(file.fd, file.length, file.offset)
            copy = CompressedCopy(b"", b"")
            body = self.policy.compress_once(coding, body)
            count(self.core, exchange, STREAM)
        if copy.source_block != block:
            headers, lowered = encoded_headers(entry.headers, entry.lowered, coding)
            copy.block = b"".join(
                b"%s: %s\r\n" % pair for pair, name in zip(headers, lowered) if name not in _PER_ANSWER
            )
            copy.source_block = block
        response.file = None  # (an identity body on disk: not sent; its owner closes it)
        response.block = copy.block + extra
        response.body = body

    def _copy(self, exchange: "Exchange", entry: CachedObject, coding: bytes, stamp: bytes) -> CompressedCopy:
        copy = self.copies.get(entry, coding, stamp)
        if copy is not None:
            count(self.core, exchange, COPY_HIT)
            return copy
        copy = CompressedCopy(stamp, self.policy.compress(coding, entry.read_body()))
        self.copies.put(entry, coding, copy)
        count(self.core, exchange, COPY_MADE)
        return copy
