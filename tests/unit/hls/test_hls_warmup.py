"""HLS warm-up jobs with a fake playlist reader and cache warm-up."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from twisted.internet.defer import Deferred, fail, succeed

from speedproxy.hls.playlist import parse_playlist
from speedproxy.hls.warmup import HlsWarmups, WarmupRefused, choose_segments, choose_variants

MASTER = b"""#EXTM3U
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="en",URI="audio/index.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=2000000,AUDIO="aac"
mid/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=800000,AUDIO="aac"
low/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=5000000,AUDIO="aac"
high/index.m3u8
"""


def media(count: int, live: bool = False) -> bytes:
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0", '#EXT-X-MAP:URI="init.mp4"']
    for number in range(count):
        lines += ["#EXTINF:2.0,", f"seg{number}.m4s"]
    if not live:
        lines.append("#EXT-X-ENDLIST")
    return ("\n".join(lines) + "\n").encode()


class CacheJob:
    def __init__(self, urls: List[str]) -> None:
        self.id = "c1"
        self.urls = urls
        self.state = "running"
        self.done = 0
        self.failed = 0
        self.finished = None
        self.by_status: Dict[str, int] = {}
        self.recent: List[Any] = []


class CacheJobs:
    def __init__(self) -> None:
        self.started: List[CacheJob] = []

    def start(self, urls: List[str]) -> CacheJob:
        job = CacheJob(urls)
        self.started.append(job)
        return job


def reader(files: Dict[str, Tuple[int, bytes]], asked: List[str]) -> Any:
    def read(url: str) -> "Deferred[Tuple[int, bytes]]":
        asked.append(url)
        if url not in files:
            return fail(ConnectionRefusedError("refused"))
        return succeed(files[url])

    return read


BASE = "http://h/s/"


def files() -> Dict[str, Tuple[int, bytes]]:
    return {
        BASE + "master.m3u8": (200, MASTER),
        BASE + "low/index.m3u8": (200, media(5)),
        BASE + "mid/index.m3u8": (200, media(5)),
        BASE + "high/index.m3u8": (200, media(5)),
        BASE + "audio/index.m3u8": (200, media(5, live=True)),
    }


def test_choices() -> None:
    master = parse_playlist(MASTER)
    assert choose_variants(master, "lowest") == ["low/index.m3u8"]
    assert choose_variants(master, 2) == ["mid/index.m3u8", "low/index.m3u8"]  # playlist order
    assert choose_variants(master, "all") == ["mid/index.m3u8", "low/index.m3u8", "high/index.m3u8", "audio/index.m3u8"]
    assert choose_segments(parse_playlist(media(5)), 2) == ["init.mp4", "seg0.m4s", "seg1.m4s"]
    assert choose_segments(parse_playlist(media(5, live=True)), 2) == ["init.mp4", "seg3.m4s", "seg4.m4s"]  # the live edge
    assert choose_segments(parse_playlist(media(5)), 0) == ["init.mp4"]


def test_a_job_reads_the_master_the_chosen_media_playlists_and_warms_their_segments() -> None:
    asked: List[str] = []
    caches = CacheJobs()
    jobs = HlsWarmups(reader(files(), asked), caches, wall=lambda: 100.0)
    job = jobs.start(BASE + "master.m3u8", 2, 1)
    assert asked == [BASE + "master.m3u8", BASE + "mid/index.m3u8", BASE + "low/index.m3u8"]
    assert caches.started[0].urls == [BASE + "mid/init.mp4", BASE + "mid/seg0.m4s", BASE + "low/init.mp4", BASE + "low/seg0.m4s"]
    summary = job.summary()
    assert summary["state"] == "running" and summary["phase"] == "segments"
    assert summary["segments"]["total"] == 4 and summary["segments"]["pending"] == 4
    cache_job = caches.started[0]
    cache_job.state, cache_job.done, cache_job.finished = "done", 4, 101.0
    summary = jobs.get(job.id).summary()
    assert summary["state"] == "done" and summary["segments"]["done"] == 4 and summary["finished"] == 101.0


def test_a_media_playlist_url_and_failures() -> None:
    asked: List[str] = []
    caches = CacheJobs()
    table = files()
    table[BASE + "mid/index.m3u8"] = (404, b"")
    jobs = HlsWarmups(reader(table, asked), caches)
    job = jobs.start(BASE + "low/index.m3u8", "all", 2)
    assert job.playlists[0]["kind"] == "media" and caches.started[-1].urls[-1] == BASE + "low/seg1.m4s"
    job = jobs.start(BASE + "master.m3u8", "all", 1)
    errors = {item["url"]: item.get("error") for item in job.playlists}
    assert errors[BASE + "mid/index.m3u8"] == "status 404" and job.phase == "segments"  # the others go on
    failed = jobs.start("http://h/none/master.m3u8")
    assert failed.state == "failed" and "refused" in failed.error
    table[BASE + "junk.m3u8"] = (200, b"<html>")
    junk = jobs.start(BASE + "junk.m3u8")
    assert junk.state == "failed" and junk.playlists[0]["error"] == "not a playlist"


def test_running_jobs_are_capped() -> None:
    pending: Deferred = Deferred()
    jobs = HlsWarmups(lambda url: pending, CacheJobs(), keep=2)
    jobs.start(BASE + "a.m3u8")
    jobs.start(BASE + "b.m3u8")
    try:
        jobs.start(BASE + "c.m3u8")
    except WarmupRefused:
        pass
    else:
        raise AssertionError("a third running job was accepted")
