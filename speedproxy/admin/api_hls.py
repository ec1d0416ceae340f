"""``/api/v1/hls/*``: HLS warm-up jobs and the streams being watched.

* ``POST /api/v1/hls/warmup`` ``{"url": "http://host/.../master.m3u8",
  "variants": "all" | "lowest" | N, "segments": 3}``: 202 at once with the
  job's id (:mod:`speedproxy.hls.warmup`).
* ``GET /api/v1/hls/warmup``: the kept jobs; ``GET /api/v1/hls/warmup/<id>``:
  one job's progress and results.
* ``GET /api/v1/hls/streams``: the streams watched now, every worker's
  figures combined (:mod:`speedproxy.admin.api_hls_streams`).

Playlists of a warm-up are read through the proxy's own listener (a plain
HTTP GET on ``server.port`` with the URL's ``Host``), so they are stored and
rewritten as players get them; segments go through the cache warm-up
(the workers' ``WarmCache``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail
from twisted.web.resource import Resource
from twisted.web.server import Request

from speedproxy.admin.api_cache_purge import check_url
from speedproxy.admin.api_hls_streams import StreamsResource
from speedproxy.admin.api_jobs import JobsResource
from speedproxy.admin.context import AdminContext
from speedproxy.admin.json_resource import APIError, bad_request, read_json_object
from speedproxy.hls.warmup import ALL, LOWEST, MAX_SEGMENTS, HlsWarmups, WarmupRefused

#: Seconds a playlist read through the listener may take.
PLAYLIST_TIMEOUT = 30.0
#: Largest playlist a warm-up reads.
MAX_PLAYLIST = 8 * 1024 * 1024


def listener_reader(control: Any) -> Callable[[str], "Deferred[Tuple[int, bytes]]"]:
    """Reads a URL through the proxy's listener (``control.config.server``):
    ``Deferred((status, body))``, with ``control.reactor``."""
    from twisted.web.client import Agent, readBody
    from twisted.web.http_headers import Headers

    agents: Dict[str, Any] = {}

    def read(url: str) -> "Deferred[Tuple[int, bytes]]":
        reactor = control.reactor
        agent = agents.get("agent")
        if agent is None:
            agent = agents["agent"] = Agent(reactor, connectTimeout=PLAYLIST_TIMEOUT)
        current = control.config
        server = current.server
        if getattr(getattr(current, "ssl", None), "enabled", False):
            return fail(RuntimeError("HLS warm-up reads playlists through a plain HTTP listener (ssl is enabled)"))
        parts = urlsplit(url)
        host = server.host if server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        local = f"http://{host}:{server.port}{target}".encode("ascii")
        headers = Headers({b"Host": [parts.netloc.encode("ascii")], b"User-Agent": [b"speedproxy (hls warm-up)"]})
        call = agent.request(b"GET", local, headers)

        def got(response: Any) -> Deferred:
            if isinstance(response.length, int) and response.length > MAX_PLAYLIST:
                response.deliverBody(_Discard())
                return fail(RuntimeError(f"playlist larger than {MAX_PLAYLIST} bytes"))
            return readBody(response).addCallback(lambda body: (response.code, body))

        call.addCallback(got)
        call.addTimeout(PLAYLIST_TIMEOUT, reactor)
        return call

    return read


class _Discard:
    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


def _choice(value: Any) -> Any:
    if value in (ALL, LOWEST):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise bad_request(f'variants must be "all", "lowest" or a whole number of variants >= 1, got {value!r}', "variants")


class HlsWarmupResource(JobsResource):
    """``POST`` a job, ``GET`` the list; ``/<id>`` is one job."""

    FIELDS = ("url", "variants", "segments")
    path = "/api/v1/hls/warmup"
    what = "HLS warm-up job"

    def json_GET(self, request: Request) -> Dict[str, Any]:
        return {"jobs": [job.summary() for job in self.jobs.jobs.values()]}

    def json_POST(self, request: Request) -> Any:
        body = read_json_object(request)
        for key in body:
            if key not in self.FIELDS:
                raise bad_request(f"unknown key {key!r} (give url, variants, segments)", key)
        url = check_url(body.get("url"), "url")
        variants = _choice(body.get("variants", ALL))
        segments = body.get("segments", 3)
        if not isinstance(segments, int) or isinstance(segments, bool) or not 0 <= segments <= MAX_SEGMENTS:
            raise bad_request(f"segments must be a whole number from 0 to {MAX_SEGMENTS}, got {segments!r}", "segments")
        try:
            job = self.jobs.start(url, variants, segments)
        except WarmupRefused as error:
            raise APIError(429, "too_many_jobs", str(error)) from None
        return self.accepted(request, job, f"url={url}", job.summary())



def hls_namespace(api: AdminContext, control: Any, cache_jobs: Any) -> Dict[bytes, Resource]:
    """The children of ``/api/v1/hls``."""
    reader = listener_reader(control)
    jobs = HlsWarmups(reader, cache_jobs)
    return {b"warmup": HlsWarmupResource(api, jobs), b"streams": StreamsResource(api)}
