"""HLS warm-up jobs: a master playlist, the media playlists chosen, their first segments.

``POST /api/v1/hls/warmup`` starts an :class:`HlsWarmupJob` and answers at
once; the job runs in the master process:

1. the master playlist is read *through the proxy* (``playlists``: a
   callable giving ``Deferred((status, body))``, in the admin API a GET on
   the proxy's own listener), so it is fetched, rewritten, capped and
   stored exactly as a player would get it;
2. the variants chosen (``"all"``; ``"lowest"``; ``N``: the ``N`` lowest
   ``BANDWIDTH`` ones) have their media playlists read the same way
   (``"all"`` also takes the ``EXT-X-MEDIA`` and I-frame renditions);
3. the first ``segments`` segments of each (the last ones of a live
   playlist: the live edge players start at), with their init sections and
   keys, are fetched into the cache by the workers as a cache warm-up job
   (:class:`speedproxy.admin.cache_warmup.WarmupJobs`, whose progress the
   HLS job reports).

A URL given for a media playlist warms that playlist's segments only.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import urljoin

from twisted.internet.defer import Deferred, maybeDeferred

from speedproxy.hls.playlist import Playlist, parse_playlist

#: ``variants`` values besides a positive whole number.
ALL = "all"
LOWEST = "lowest"
#: Most segments per media playlist a job may ask for.
MAX_SEGMENTS = 1000
#: Jobs kept (finished ones dropped first).
KEEP = 100

Choice = Union[str, int]
#: Reads a playlist through the proxy: ``url`` → ``Deferred((status, body))``.
PlaylistReader = Callable[[str], "Deferred[Tuple[int, bytes]]"]


class WarmupRefused(Exception):
    """A job cannot start (too many running)."""


def choose_variants(playlist: Playlist, choice: Choice) -> List[str]:
    """URIs of the renditions ``choice`` takes from a master playlist, in playlist order."""
    streams = [variant for variant in playlist.variants if variant.group == "variant"]
    if choice == ALL:
        chosen = list(playlist.variants)
    else:
        count = 1 if choice == LOWEST else int(choice)
        ranked = sorted(range(len(streams)), key=lambda index: (streams[index].bandwidth, index))[:count]
        chosen = [streams[index] for index in sorted(ranked)]
    uris: List[str] = []
    for variant in chosen:
        if variant.uri not in uris:
            uris.append(variant.uri)
    return uris


def choose_segments(playlist: Playlist, count: int) -> List[str]:
    """URIs of the first ``count`` segments (the last ones of a live playlist), init sections and keys first."""
    segments = playlist.segments[-count:] if playlist.is_live else playlist.segments[:count]
    uris = list(playlist.init_uris) + list(playlist.key_uris)
    for segment in segments if count > 0 else ():
        if segment.uri not in uris:
            uris.append(segment.uri)
    return uris


@dataclass(eq=False)
class HlsWarmupJob:
    """One HLS warm-up job and its progress."""

    id: str
    url: str
    variants: Choice
    segments: int
    created: float
    state: str = "running"
    #: ``master``, ``media``, ``segments``, then ``done`` (or ``failed``).
    phase: str = "master"
    error: Optional[str] = None
    finished: Optional[float] = None
    #: ``{"url", "status"[, "error"], "kind"}`` of each playlist read.
    playlists: List[Dict[str, Any]] = field(default_factory=list)
    segment_urls: List[str] = field(default_factory=list)
    #: The cache warm-up job fetching the segments.
    cache_job: Any = None

    def _follow(self) -> None:
        """Done when the cache warm-up of the segments is."""
        job = self.cache_job
        if job is not None and job.state != "running" and self.state == "running":
            self.state = "done" if job.failed == 0 else "failed"
            self.phase = "done"
            self.finished = job.finished
            if job.failed:
                self.error = f"{job.failed} of {len(job.urls)} segment fetches failed"

    def summary(self) -> Dict[str, Any]:
        self._follow()
        body: Dict[str, Any] = {
            "id": self.id,
            "url": self.url,
            "variants": self.variants,
            "segments_per_playlist": self.segments,
            "state": self.state,
            "phase": self.phase,
            "created": round(self.created, 3),
            "finished": round(self.finished, 3) if self.finished is not None else None,
            "playlists": list(self.playlists),
        }
        segments: Dict[str, Any] = {"total": len(self.segment_urls), "done": 0, "failed": 0, "pending": len(self.segment_urls)}
        job = self.cache_job
        if job is not None:
            segments.update(done=job.done, failed=job.failed, pending=len(job.urls) - job.done,
                            by_status=dict(job.by_status), recent=list(job.recent), cache_job=job.id)
        body["segments"] = segments
        if self.error is not None:
            body["error"] = self.error
        return body


class HlsWarmups:
    """Runs HLS warm-up jobs: ``playlists`` reads playlists, ``cache_jobs`` (a
    :class:`~speedproxy.admin.cache_warmup.WarmupJobs`) fetches segments."""

    def __init__(self, playlists: PlaylistReader, cache_jobs: Any, keep: int = KEEP,
                 wall: Callable[[], float] = time.time) -> None:
        self._read = playlists
        self.cache_jobs = cache_jobs
        self.keep = keep
        self._wall = wall
        self.jobs: "OrderedDict[str, HlsWarmupJob]" = OrderedDict()

    def get(self, job_id: str) -> Optional[HlsWarmupJob]:
        return self.jobs.get(job_id)

    def start(self, url: str, variants: Choice = ALL, segments: int = 3) -> HlsWarmupJob:
        """Start a job; it runs on after this returns.

        :raises WarmupRefused: :attr:`keep` jobs are all still running.
        """
        if len(self.jobs) >= self.keep:
            finished = [key for key, job in self.jobs.items() if job.summary()["state"] != "running"]
            if len(self.jobs) - len(finished) >= self.keep:
                raise WarmupRefused(f"{self.keep} HLS warm-up jobs are still running")
            for key in finished[: len(self.jobs) - self.keep + 1]:
                del self.jobs[key]
        job = HlsWarmupJob(os.urandom(6).hex(), url, variants, segments, self._wall())
        self.jobs[job.id] = job
        self._playlist(job, url, "master").addCallback(self._master_read, job)
        return job

    def _fail(self, job: HlsWarmupJob, error: str) -> None:
        job.state = "failed"
        job.error = error
        job.finished = self._wall()

    def _playlist(self, job: HlsWarmupJob, url: str, kind: str) -> "Deferred[Optional[Playlist]]":
        """Read and parse one playlist (noted in the job); ``None`` when unusable."""
        outcome: Dict[str, Any] = {"url": url, "kind": kind, "status": None}
        job.playlists.append(outcome)

        def read(answer: Tuple[int, bytes]) -> Optional[Playlist]:
            status, body = answer
            outcome["status"] = status
            if status != 200:
                outcome["error"] = f"status {status}"
                return None
            playlist = parse_playlist(body)
            if playlist is None:
                outcome["error"] = "not a playlist"
            return playlist

        def failed(failure: Any) -> None:
            outcome["error"] = failure.getErrorMessage() or repr(failure.value)
            return None

        return maybeDeferred(self._read, url).addCallbacks(read, failed)

    def _master_read(self, playlist: Optional[Playlist], job: HlsWarmupJob) -> None:
        if playlist is None:
            self._fail(job, "the playlist could not be read: " + str(job.playlists[0].get("error")))
            return
        if not playlist.is_master:
            job.playlists[0]["kind"] = "media"
            self._segments(job, [(job.url, playlist)])
            return
        job.phase = "media"
        urls = [urljoin(job.url, uri) for uri in choose_variants(playlist, job.variants)]
        if not urls:
            self._fail(job, "the master playlist lists no variants")
            return
        read: List[Tuple[str, Optional[Playlist]]] = []

        def one_read(media: Optional[Playlist], url: str) -> None:
            read.append((url, media))
            if len(read) == len(urls):
                order = {url: index for index, url in enumerate(urls)}
                read.sort(key=lambda item: order[item[0]])
                self._segments(job, [(url, media) for url, media in read if media is not None and not media.is_master])

        for url in urls:
            self._playlist(job, url, "media").addCallback(one_read, url)

    def _segments(self, job: HlsWarmupJob, medias: List[Tuple[str, Playlist]]) -> None:
        if not medias:
            self._fail(job, "no media playlist could be read")
            return
        urls: List[str] = []
        for url, media in medias:
            for uri in choose_segments(media, job.segments):
                absolute = urljoin(url, uri)
                if absolute not in urls:
                    urls.append(absolute)
        job.segment_urls = urls
        job.phase = "segments"
        if not urls:
            job.state = "done"
            job.phase = "done"
            job.finished = self._wall()
            return
        try:
            job.cache_job = self.cache_jobs.start(urls)
        except Exception as error:  # TooManyJobs
            self._fail(job, str(error))
