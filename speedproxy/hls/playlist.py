"""HLS playlists (RFC 8216) as the edge needs them: recognised, parsed, timed.

Pure functions, no I/O.  Parsing uses the ``m3u8`` package: a live
window of a few segments parses in about 0.13 ms, but m3u8 costs some
18 us per segment, so an hour of 2 s segments (1800) takes about 30 ms
(measured on the test machine).  Each version of a playlist is parsed
once per worker (a VOD playlist once per hour with the default
``vod_playlist_ttl``); the filter parses bodies over
:data:`speedproxy.hls.filter.THREAD_PARSE` in the reactor's thread pool
(so the reactor is held for at most the interpreter's switch interval at
a time, not the whole parse), and a playlist's lifetime, needed while the
cache stores it, comes from :func:`playlist_outline`, a scan of its tags.
:attr:`Playlist.parse_seconds` says what a parse cost, and the filter
counts it (``parse_ms`` in ``/cache/info``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Collection, List, Optional, Tuple
from urllib.parse import urljoin, urlsplit

import m3u8

#: Playlist media types (RFC 8216 4: the first; the others are seen in the wild).
PLAYLIST_TYPES = (
    b"application/vnd.apple.mpegurl",
    b"application/x-mpegurl",
    b"audio/mpegurl",
    b"audio/x-mpegurl",
)

#: Media types of segments and init sections (RFC 8216 3; ISO BMFF, MPEG-TS,
#: packed audio): a worker that has not read the playlist listing a URI
#: still knows such a response for a segment.
SEGMENT_TYPES = (
    b"video/mp2t",
    b"video/mp4",
    b"video/iso.segment",
    b"audio/mp4",
    b"audio/aac",
    b"audio/mpeg",
    b"audio/ac3",
    b"audio/eac3",
    b"application/mp4",
)

#: Playlist kinds.
MASTER = "master"
VOD = "vod"
EVENT = "event"
LIVE = "live"

#: Roles of a URI listed in a media playlist.
SEGMENT = "segment"
INIT = "init"
KEY = "key"


def is_playlist_path(path: bytes) -> bool:
    """Does a request path name a playlist (``.m3u8``)?"""
    return path[-5:].lower() == b".m3u8"


def is_playlist_type(content_type: Optional[bytes]) -> bool:
    """Is a ``Content-Type`` value one of a playlist?"""
    if not content_type:
        return False
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type in PLAYLIST_TYPES


def is_segment_type(content_type: Optional[bytes]) -> bool:
    """Is a ``Content-Type`` value one of a media segment?"""
    if not content_type:
        return False
    return content_type.split(b";", 1)[0].strip().lower() in SEGMENT_TYPES


@dataclass
class Segment:
    """A media segment of a media playlist."""

    sequence: int
    uri: str
    #: ``EXT-X-BYTERANGE`` (``length[@offset]``), if the segment is part of a file.
    byterange: Optional[str] = None


@dataclass
class Variant:
    """A rendition listed by a master playlist."""

    uri: str
    #: ``BANDWIDTH`` in bits/s (0 when not given: ``EXT-X-MEDIA``).
    bandwidth: int
    #: Which renditions a player switches between: ``variant`` (the
    #: ``EXT-X-STREAM-INF`` ones), ``iframe``, or ``media:<TYPE>:<GROUP-ID>``.
    group: str


@dataclass
class Playlist:
    """What the edge needs of a parsed playlist."""

    kind: str
    #: ``EXT-X-TARGETDURATION`` in seconds (media playlists; 0 when missing).
    target_duration: float = 0.0
    media_sequence: int = 0
    segments: List[Segment] = field(default_factory=list)
    #: URIs of ``EXT-X-MAP`` init sections and ``EXT-X-KEY`` keys, each once.
    init_uris: List[str] = field(default_factory=list)
    key_uris: List[str] = field(default_factory=list)
    #: Master playlists: the renditions they list.
    variants: List[Variant] = field(default_factory=list)
    parse_seconds: float = 0.0

    @property
    def is_master(self) -> bool:
        return self.kind == MASTER

    @property
    def is_live(self) -> bool:
        """A media playlist that may still change (live or EVENT without ENDLIST)."""
        return self.kind in (LIVE, EVENT)


def parse_playlist(body: bytes) -> Optional[Playlist]:
    """Parse a playlist body; ``None`` when it is not one (no ``#EXTM3U``) or is unreadable."""
    started = time.perf_counter()
    text = body.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.lstrip().startswith("#EXTM3U"):
        return None
    try:
        parsed = m3u8.loads(text)
    except Exception:  # m3u8 raises assorted errors on malformed input
        return None
    if parsed.is_variant:
        playlist = Playlist(MASTER)
        for item in parsed.playlists:
            info = item.stream_info
            playlist.variants.append(Variant(item.uri, int(getattr(info, "bandwidth", 0) or 0), "variant"))
        for item in parsed.iframe_playlists:
            info = item.iframe_stream_info
            playlist.variants.append(Variant(item.uri, int(getattr(info, "bandwidth", 0) or 0), "iframe"))
        for media in parsed.media:
            if media.uri:
                group = "media:%s:%s" % (media.type or "", media.group_id or "")
                playlist.variants.append(Variant(media.uri, 0, group))
    else:
        if parsed.is_endlist:
            kind = VOD
        elif (parsed.playlist_type or "").lower() == "event":
            kind = EVENT
        else:
            kind = LIVE
        playlist = Playlist(
            kind,
            target_duration=float(parsed.target_duration or 0),
            media_sequence=int(parsed.media_sequence or 0),
        )
        first = playlist.media_sequence
        for index, segment in enumerate(parsed.segments):
            sequence = segment.media_sequence if segment.media_sequence is not None else first + index
            playlist.segments.append(Segment(int(sequence), segment.uri, segment.byterange or None))
            init = segment.init_section
            if init is not None and init.uri and init.uri not in playlist.init_uris:
                playlist.init_uris.append(init.uri)
            key = segment.key
            if key is not None and key.uri and (key.method or "").upper() != "NONE" and key.uri not in playlist.key_uris:
                playlist.key_uris.append(key.uri)
    playlist.parse_seconds = time.perf_counter() - started
    return playlist


_TARGET_DURATION = re.compile(rb"#EXT-X-TARGETDURATION:[ \t]*([0-9]+(?:\.[0-9]*)?)")
_EVENT = re.compile(rb"#EXT-X-PLAYLIST-TYPE:[ \t]*EVENT", re.IGNORECASE)


def playlist_outline(body: bytes) -> Optional[Playlist]:
    """A playlist's kind and target duration, from a scan of its tags (no
    parse, no segments): what its lifetime needs, at the cost of a few
    ``bytes.find`` over the body (microseconds where m3u8 takes
    milliseconds for a long VOD playlist).  ``None``: not a playlist."""
    start = 3 if body[:3] == b"\xef\xbb\xbf" else 0
    if not body[start : start + 64].lstrip().startswith(b"#EXTM3U"):
        return None
    if b"#EXT-X-STREAM-INF" in body or b"#EXT-X-I-FRAME-STREAM-INF" in body:
        return Playlist(MASTER)
    if b"#EXT-X-ENDLIST" in body:
        kind = VOD
    elif _EVENT.search(body):
        kind = EVENT
    else:
        kind = LIVE
    match = _TARGET_DURATION.search(body)
    return Playlist(kind, target_duration=float(match.group(1)) if match else 0.0)


def playlist_lifetime(
    playlist: Playlist, live_ttl: Optional[float], vod_ttl: float
) -> Optional[float]:
    """Seconds a playlist stays fresh in the cache; ``None``: the origin decides.

    Master and VOD playlists get ``vod_ttl``; live and EVENT ones
    ``live_ttl``, or half their target duration for ``None`` (``auto``:
    RFC 8216 6.2.2, what a player waits before reloading a playlist that
    did not change).  A setting of 0 leaves it to the origin.
    """
    if playlist.is_live:
        if live_ttl is None:
            return playlist.target_duration / 2.0 if playlist.target_duration > 0 else None
        return live_ttl or None
    return vod_ttl or None


def resolve(base_path: str, uri: str, hosts: Collection[str] = ()) -> Optional[str]:
    """The path (and query) a player asks us for ``uri`` listed in the playlist at ``base_path``.

    ``None`` when ``uri`` is absolute and points at a host other than ``hosts``
    (lower-cased ``host[:port]`` forms: those are asked of us, or come back
    to us once rewritten).  Fragments are dropped.
    """
    parts = urlsplit(uri)
    if parts.scheme or parts.netloc:
        if parts.scheme not in ("http", "https", "") or parts.netloc.lower() not in hosts:
            return None
        path = parts.path or "/"
    else:
        path = urlsplit(urljoin(base_path, uri)).path
    return path + ("?" + parts.query if parts.query else "")


def split_target(target: str) -> Tuple[str, str]:
    """``/a/b?q`` as ``("/a/b", "?q")``."""
    path, mark, query = target.partition("?")
    return path, mark + query
