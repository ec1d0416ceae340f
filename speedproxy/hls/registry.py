"""What a worker knows of the streams behind a route: renditions and their segments.

Learnt from the playlists that pass through the worker (or that it reads
from the cache when a player asks for one): a media playlist makes its
path a *rendition* and records, for each URI it lists, the rendition and
sequence number (segments) or role (init sections, keys); a master
playlist groups its renditions, so a player moving between them is seen
as one viewer of one stream.

Bounded: the oldest renditions and URIs are forgotten first (a live
stream lists new segments forever).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Collection, Dict, List, Optional, Tuple

from speedproxy.hls.playlist import INIT, KEY, SEGMENT, Playlist, resolve

#: A viewer group: the master playlist's path and the kind of rendition
#: (``variant``, ``iframe``, ``media:AUDIO:aac``...), or the rendition's own path.
Group = Tuple[str, ...]


class Rendition:
    """One media playlist: its latest window of segments."""

    __slots__ = ("path", "kind", "target_duration", "first", "targets", "byterange", "version")

    def __init__(self, path: str) -> None:
        self.path = path
        self.kind = ""
        self.target_duration = 0.0
        #: Sequence number of ``targets[0]``.
        self.first = 0
        #: Targets (path and query) of the segments listed, in order.
        self.targets: List[str] = []
        #: Some segments are byte ranges of a file (not prefetched).
        self.byterange = False
        #: The stored response this was learnt from (its response time), to
        #: tell a newer version from the one already parsed.
        self.version = 0.0

    @property
    def last(self) -> int:
        return self.first + len(self.targets) - 1

    def target(self, sequence: int) -> Optional[str]:
        index = sequence - self.first
        if 0 <= index < len(self.targets):
            return self.targets[index]
        return None


class SegmentRef:
    """A URI listed in a media playlist."""

    __slots__ = ("rendition", "sequence", "role")

    def __init__(self, rendition: Rendition, sequence: int, role: str) -> None:
        self.rendition = rendition
        self.sequence = sequence
        self.role = role


class StreamRegistry:
    """Renditions, segments and master playlists of one route in one worker."""

    def __init__(self, max_segments: int = 200_000, max_renditions: int = 10_000) -> None:
        self.max_segments = max_segments
        self.max_renditions = max_renditions
        self.renditions: "OrderedDict[str, Rendition]" = OrderedDict()
        self.segments: "OrderedDict[str, SegmentRef]" = OrderedDict()
        #: Rendition path -> its group, from the master playlists seen.
        self.groups: "OrderedDict[str, Group]" = OrderedDict()
        #: Master playlist path -> the version parsed.
        self.masters: "OrderedDict[str, float]" = OrderedDict()

    # -- learning -------------------------------------------------------------------

    def version(self, path: str) -> Optional[float]:
        """The version of the playlist at ``path`` already learnt, if any."""
        rendition = self.renditions.get(path)
        if rendition is not None:
            return rendition.version
        return self.masters.get(path)

    def set_version(self, path: str, version: float) -> None:
        """The playlist learnt from a response is the one stored with ``version``."""
        rendition = self.renditions.get(path)
        if rendition is not None:
            rendition.version = version
        elif path in self.masters:
            self.masters[path] = version

    def learn(self, path: str, playlist: Playlist, hosts: Collection[str] = (), version: float = 0.0) -> List[str]:
        """Record the playlist at ``path``; returns the targets of segments not
        listed by its previous version (new live segments), in order."""
        if playlist.is_master:
            self.masters[path] = version
            self.masters.move_to_end(path)
            for variant in playlist.variants:
                target = resolve(path, variant.uri, hosts)
                if target is not None:
                    rendition_path = target.split("?", 1)[0]
                    self.groups[rendition_path] = (path, variant.group)
                    self.groups.move_to_end(rendition_path)
            _trim(self.masters, self.max_renditions)
            _trim(self.groups, self.max_renditions)
            return []
        rendition = self.renditions.get(path)
        known = -1
        if rendition is None:
            rendition = self.renditions[path] = Rendition(path)
        else:
            self.renditions.move_to_end(path)
            known = rendition.last if rendition.targets else -1
        rendition.kind = playlist.kind
        rendition.target_duration = playlist.target_duration
        rendition.version = version
        rendition.first = playlist.segments[0].sequence if playlist.segments else playlist.media_sequence
        rendition.targets = []
        rendition.byterange = False
        segments = self.segments
        fresh: List[str] = []
        seen = set()
        for segment in playlist.segments:
            target = resolve(path, segment.uri, hosts)
            if target is None:
                target = ""  # another host's: kept as a gap, never fetched by us
            rendition.targets.append(target)
            if not target:
                continue
            if segment.byterange or target in seen:
                rendition.byterange = True
            seen.add(target)
            segments[target] = SegmentRef(rendition, segment.sequence, SEGMENT)
            segments.move_to_end(target)
            if known >= 0 and segment.sequence > known:
                fresh.append(target)
        for role, uris in ((INIT, playlist.init_uris), (KEY, playlist.key_uris)):
            for uri in uris:
                target = resolve(path, uri, hosts)
                if target is not None:
                    segments[target] = SegmentRef(rendition, -1, role)
                    segments.move_to_end(target)
        _trim(self.renditions, self.max_renditions)
        _trim(self.segments, self.max_segments)
        return fresh

    # -- looking up -----------------------------------------------------------------

    def segment(self, target: str) -> Optional[SegmentRef]:
        return self.segments.get(target)

    def group_of(self, rendition: Rendition) -> Group:
        return self.groups.get(rendition.path) or (rendition.path,)

    def following(self, rendition: Rendition, sequence: int, depth: int) -> List[str]:
        """Targets of the ``depth`` segments after ``sequence`` listed by the rendition."""
        if rendition.byterange:
            return []
        targets = []
        for next_sequence in range(sequence + 1, sequence + 1 + depth):
            target = rendition.target(next_sequence)
            if target is None:
                break
            if target:
                targets.append(target)
        return targets

    def info(self) -> Dict[str, int]:
        return {"renditions": len(self.renditions), "uris": len(self.segments), "masters": len(self.masters)}


def _trim(table: "OrderedDict", limit: int) -> None:
    while len(table) > limit:
        table.popitem(last=False)
