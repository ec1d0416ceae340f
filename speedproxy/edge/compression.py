"""Response compression of a route (``routing.<name>.compression``), a filter.

gzip always, brotli when the ``brotli`` package is installed, negotiated
from the request's ``Accept-Encoding`` (q-values; brotli wins ties).  A
response is compressed when it is a ``200`` of a listed media type (not
``text/event-stream``: events must not wait in a compressor), not already
encoded, not a range (``Range`` requests and ``Content-Range`` answers are
left alone), not ``Cache-Control: no-transform``, and not shorter than
``min_size`` by its ``Content-Length`` (one without a length is
compressed).  Every compressible response carries ``Vary:
Accept-Encoding``, compressed or not; a compressed one gets
``Content-Encoding``, its strong ``ETag`` made weak (``W/"..."``, the bytes
differ), no ``Accept-Ranges``, and the length of what is sent when it is
known before the first byte leaves: a relayed body of known length up to
64 KiB is compressed whole when it ends and leaves with its compressed
length (``Exchange.response_done`` frames a body filter's tail that is the
whole body so); a longer one, or one without a length, streams chunked; a
cache hit's length is that of the compressed copy.  brotli compresses a
relayed answer at ``brotli_stream_level`` (every request pays it) and a kept
copy at ``brotli_level`` (made once).

**Order on the route's chain, with the cache.**  The compression filter is
the *first* filter of the route (:func:`speedproxy.routing.build_filters`)::

    CompressionFilter  [edge filters]  [operator filters]  [HlsFilter]  CacheFilter*  [HlsRewriteFilter]  -> origin

It has no request hook: the coding is negotiated from the request's
``Accept-Encoding`` (as the request is when its answer arrives) only once
an answer turns out to be compressible, so a refusal by an edge filter, or
an answer that is not compressible (a video segment), costs no
negotiation.  Response hooks run last to first, so it gets the response after every other
filter made of it: the cache stores, the HLS filters parse and rewrite, and
a filter rewriting bodies (signed URIs in playlists) sees the origin's
*identity* body, and coalesced followers get the identity body too, each
compressed for its own client.  Placed anywhere else, the cache would
store one client's coding for all and the playlist filters would see
compressed bytes.  A cache hit is a
local answer that no response hook sees: with compression on, the route's
cache is a :class:`~speedproxy.edge.compression_copies.CompressingCacheFilter`,
which notes the stored object each of its answers comes from; this
filter's ``local_response`` hook, the last one to run, then sends the
answer compressed from a **compressed copy kept in the cache tiers**, one
per stored object and coding, made on the first hit that needs it (see
:mod:`speedproxy.edge.compression_copies`).  An answer whose body another
filter changed for this request alone (signed URIs in a playlist) is
compressed on its own instead.  So a
stored object is compressed once per coding (per host with a disk tier),
not once per request; only misses compress as they stream.

Counted per route in ``speedproxy_compression_total{route,event}``:
``stream`` (a response compressed as it was relayed), ``copy_made`` (a
stored object compressed into a kept copy), ``copy_hit`` (a hit answered
from a kept copy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from twisted.logger import Logger

from speedproxy.config.model import RouteCompressionConfig
from speedproxy.edge.compression_codecs import (
    _chosen,
    BR,
    GZIP,
    WHOLE_BODY_MAX,
    WholeBody,
    brotli_available,
    compress,
    compressor,
    negotiate,
    whole_body_encoder,
)
from speedproxy.filters.base import Filter
from speedproxy.filters.messages import FilterRequest, FilterResponse, LocalResponse

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.exchange import Exchange

log = Logger(namespace="speedproxy.edge")

Headers = List[Tuple[bytes, bytes]]

#: Events counted per route (the order of the stats words).
STREAM, COPY_MADE, COPY_HIT = range(3)
EVENTS = ("stream", "copy_made", "copy_hit")

_STREAM = "compression_stream"
#: ``view.state`` key: ``(cache filter, response, stored object, body, file)``
#: of an answer from a compressing route's cache (:mod:`speedproxy.edge.compression_copies`).
ANSWERED = "compression_answered"

_VARY_VALUE = b"Accept-Encoding"
_NEVER = frozenset({b"text/event-stream"})


class CompressionPolicy:
    """Which responses of a route are compressed (the route's settings, prepared)."""

    def __init__(self, settings: RouteCompressionConfig) -> None:
        self.settings = settings
        self.min_size = settings.min_size
        self.gzip_level = settings.gzip_level
        self.brotli_level = settings.brotli_level
        self.brotli_stream_level = settings.brotli_stream_level
        #: coding -> ``encode(body)`` of a short relayed body (:meth:`start`).
        self._whole = {
            coding: whole_body_encoder(coding, self.gzip_level, self.brotli_stream_level)
            for coding in ((BR, GZIP) if brotli_available() else (GZIP,))
        }
        self.offer_brotli = settings.brotli and brotli_available()
        exact, ranges = set(), set()
        for item in settings.types:
            major, _, minor = item.partition("/")
            if minor == "*":
                ranges.add(major.encode("ascii"))
            else:
                exact.add(item.encode("ascii"))
        self._exact = frozenset(exact)
        self._ranges = frozenset(ranges)
        self._types: Dict[bytes, bool] = {}

    @staticmethod
    def eligible(request: Any) -> bool:
        """May the answer to this request head be compressed (``GET`` or ``HEAD``, no ``Range``)?"""
        method = request.method
        return (method == b"GET" or method == b"HEAD") and b"range" not in request.lowered

    def choose(self, request: Any) -> Optional[bytes]:
        """The coding for a request head (``Accept-Encoding``), ``None`` for identity."""
        lowered = request.lowered
        if b"accept-encoding" not in lowered:
            return None
        value = request.headers[lowered.index(b"accept-encoding")][1]
        if lowered.count(b"accept-encoding") > 1:
            value = b", ".join(v for (n, v), l in zip(request.headers, lowered) if l == b"accept-encoding")
        try:  # (negotiate's memo, read here: a frame fewer per request)
            return _chosen[(value, self.offer_brotli)]
        except KeyError:
            return negotiate(value, self.offer_brotli)

    def type_listed(self, content_type: Optional[bytes]) -> bool:
        if not content_type:
            return False
        known = self._types.get(content_type)
        if known is None:
            media = content_type.partition(b";")[0].strip().lower()
            known = media not in _NEVER and (
                media in self._exact or media.partition(b"/")[0] in self._ranges
            )
            if len(self._types) >= 256:
                self._types.clear()
            self._types[content_type] = known
        return known

    def compressible(self, status: int, headers: Headers, lowered: List[bytes], length: Optional[int]) -> bool:
        """May this response be compressed (whatever the client accepts)?"""
        if status != 200 or b"content-type" not in lowered:
            return False
        content_type = headers[lowered.index(b"content-type")][1]
        listed = self._types.get(content_type)
        if not (listed if listed is not None else self.type_listed(content_type)):
            return False
        if length is not None and (length < self.min_size or length == 0):
            return False
        if b"content-encoding" in lowered:
            value = headers[lowered.index(b"content-encoding")][1].strip().lower()
            if value and value != b"identity":
                return False
        if b"content-range" in lowered:
            return False
        if b"cache-control" in lowered:
            for (_, value), name in zip(headers, lowered):
                if name == b"cache-control" and b"no-transform" in value.lower():
                    return False
        return True

    def start(self, coding: bytes, length: Optional[int] = None) -> Any:
        """A compressor for a relayed body of ``length`` bytes (``None``:
        unknown): a short one of known length is compressed whole at its end
        (:class:`~speedproxy.edge.compression_codecs.WholeBody`), others as
        they stream; brotli at ``brotli_stream_level``."""
        if length is not None and length <= WHOLE_BODY_MAX:
            return WholeBody(self._whole[coding])
        return compressor(coding, self.gzip_level, self.brotli_stream_level, length)

    def compress(self, coding: bytes, body: bytes) -> bytes:
        """A stored object's body compressed for its kept copy (``brotli_level``)."""
        return compress(coding, body, self.gzip_level, self.brotli_level)

    def compress_once(self, coding: bytes, body: bytes) -> bytes:
        """A body compressed for one answer alone (``brotli_stream_level``)."""
        return compress(coding, body, self.gzip_level, self.brotli_stream_level)


def _names_encoding(value: bytes) -> bool:
    """Does one ``Vary`` value list Accept-Encoding (or ``*``)?"""
    value = value.lower()
    if b"accept-encoding" not in value and b"*" not in value:
        return False  # (the common case, without splitting)
    for member in value.split(b","):
        member = member.strip()
        if member == b"accept-encoding" or member == b"*":
            return True
    return False


def varies_on_encoding(headers: Headers, lowered: List[bytes]) -> bool:
    """Does ``Vary`` already name Accept-Encoding (or ``*``)?"""
    for (_, value), name in zip(headers, lowered):
        if name == b"vary" and _names_encoding(value):
            return True
    return False


def add_vary(headers: Headers, lowered: List[bytes]) -> None:
    """Add ``Accept-Encoding`` to ``Vary`` (in place)."""
    if varies_on_encoding(headers, lowered):
        return
    if b"vary" in lowered:
        index = lowered.index(b"vary")
        name, value = headers[index]
        headers[index] = (name, value + b", " + _VARY_VALUE if value.strip() else _VARY_VALUE)
    else:
        headers.append((b"Vary", _VARY_VALUE))
        lowered.append(b"vary")


def weak_etag(value: bytes) -> bytes:
    value = value.strip()
    return value if value[:2] in (b"W/", b"w/") else b"W/" + value


#: Fields a compressed answer does not keep.
_DROPPED = frozenset({b"content-length", b"accept-ranges", b"content-encoding"})
_VARY_LINE = (b"Vary", _VARY_VALUE)


def encoded_headers(headers: Headers, lowered: List[bytes], coding: bytes) -> Tuple[Headers, List[bytes]]:
    """Copies of a compressible response's fields as sent compressed with ``coding``."""
    out: Headers = []
    out_lowered: List[bytes] = []
    vary_at = -1  # the first Vary field's place in ``out``
    varies = False  # some Vary field names Accept-Encoding (or *) already
    for pair, lname in zip(headers, lowered):  # (one pass: this runs on every compressed answer)
        if lname in _DROPPED:
            continue
        if lname == b"etag":
            pair = (pair[0], weak_etag(pair[1]))
        elif lname == b"vary":  # (Vary: Origin from CORS, often)
            if vary_at < 0:
                vary_at = len(out)
            if not varies:
                varies = _names_encoding(pair[1])
        out.append(pair)
        out_lowered.append(lname)
    out.append((b"Content-Encoding", coding))
    out_lowered.append(b"content-encoding")
    if vary_at < 0:
        out.append(_VARY_LINE)
        out_lowered.append(b"vary")
    elif not varies:
        name, value = out[vary_at]
        out[vary_at] = (name, value + b", " + _VARY_VALUE if value.strip() else _VARY_VALUE)
    return out, out_lowered


def count(core: Any, exchange: "Exchange", event: int) -> None:
    """Count one compression ``event`` for the exchange's route."""
    counter = getattr(getattr(core, "stats", None), "compression_event", None)
    route = exchange.route
    if counter is not None and route is not None:
        counter(route.stats_index, event)


class CompressionFilter(Filter):
    """Negotiates the coding of every request and compresses responses as they stream."""

    wants_body = True
    #: Its body hooks run only for the responses it compresses (it asks in
    #: :meth:`response_head`): others are relayed as they are, zero-copy when
    #: no other filter looks at bodies (a video segment on an HLS route).
    body_when_asked = True
    #: Only the responses it compresses change length: it drops their
    #: ``Content-Length`` itself (others keep theirs).
    rewrites_body = False
    #: A short body compressed whole leaves with its compressed length.
    sizes_tail = True

    def __init__(self, policy: CompressionPolicy, core: Any = None) -> None:
        self.policy = policy
        self.core = core
        #: ``core.stats.compression_event``, looked up on the first compressed answer.
        self._counter: Any = None

    # (No request hook: the coding is negotiated when an answer turns out to
    # be compressible, so answers that are not, a video segment, cost no
    # negotiation; a refusal by another filter costs nothing either.)

    def response_head(self, view: FilterRequest, response: FilterResponse) -> None:
        head = response._head
        if head.streaming:  # event streams and X-Accel-Buffering: no
            return None
        headers, lowered = head.headers, head.lowered
        policy = self.policy
        if not policy.compressible(head.status, headers, lowered, head.content_length):
            return None
        exchange: "Exchange" = view._exchange
        request = exchange.request
        if not policy.eligible(request):
            return None
        coding = policy.choose(request)
        if coding is None:
            add_vary(headers, lowered)
            return None
        head.headers, head.lowered = encoded_headers(headers, lowered, coding)
        length = head.content_length  # (the identity body's: sizes the compressor)
        # Compressed: chunked (HEAD: no length); a short body of known length
        # is compressed whole and leaves with its length
        # (:meth:`CompressionPolicy.start`, ``Exchange.response_done``).
        head.content_length = None
        if request.method == b"GET":
            view.state[_STREAM] = policy.start(coding, length)
            view.want_body(self)
            counter = self._counter
            if counter is None:
                counter = self._counter = getattr(getattr(self.core, "stats", None), "compression_event", None)
            route = exchange.route
            if counter is not None and route is not None:
                counter(route.stats_index, STREAM)
        return None

    def response_body(self, view: FilterRequest, data: bytes) -> bytes:
        stream = view.state.get(_STREAM)
        if stream is None:
            return data
        return stream.compress(data)

    def response_end(self, view: FilterRequest) -> Optional[bytes]:
        stream = view.state.pop(_STREAM, None)
        if stream is None:
            return None
        return stream.finish()

    def local_response(self, view: FilterRequest, response: LocalResponse) -> None:
        """An answer from the route's cache, after every other filter saw it:
        sent compressed (from the kept copy when its body is as stored)."""
        answered = view.state.pop(ANSWERED, None)
        if answered is None:
            return
        cache, made, entry, body, file = answered
        if made is not response:
            return
        unchanged = response.body is body and response.file is file
        request = view._exchange.request
        cache.encode_answer(view._exchange, self.policy.choose(request), response, entry, unchanged)


def build_compression(settings: RouteCompressionConfig, core: Any, route: str) -> Tuple[CompressionPolicy, CompressionFilter]:
    """The policy and the filter of a route."""
    policy = CompressionPolicy(settings)
    if settings.brotli and not policy.offer_brotli:
        log.info(
            "route {route}: compression.brotli is on but the brotli package is not installed "
            "(pip install 'speedproxy[brotli]'): gzip only",
            route=route,
        )
    return policy, CompressionFilter(policy, core)


__all__ = ["BR", "CompressionFilter", "CompressionPolicy", "EVENTS", "build_compression"]
