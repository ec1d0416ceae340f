"""``/api/v1/cache/warmup``: start a warm-up job, list jobs, follow one.

* ``POST /api/v1/cache/warmup`` ``{"urls": ["http://host/a", ...]}``: 202
  at once with the job's id; the job runs in the background
  (:mod:`speedproxy.admin.cache_warmup`).
* ``GET /api/v1/cache/warmup``: every kept job, without per-URL outcomes.
* ``GET /api/v1/cache/warmup/<id>``: one job: ``state`` (``running`` /
  ``done``), ``total``, ``done``, ``failed`` and the last outcomes.
"""

from __future__ import annotations

from typing import Any, Dict

from twisted.web.server import Request

from speedproxy.admin.api_cache_purge import check_url
from speedproxy.admin.api_jobs import JobsResource
from speedproxy.admin.cache_warmup import MAX_URLS, TooManyJobs
from speedproxy.admin.json_resource import APIError, bad_request, read_json_object


class WarmupResource(JobsResource):
    """``POST`` a job, ``GET`` the list; ``/<id>`` is one job."""

    path = "/api/v1/cache/warmup"
    what = "warm-up job"

    def json_GET(self, request: Request) -> Dict[str, Any]:
        return {"jobs": [job.summary(recent=False) for job in self.jobs.jobs.values()]}

    def json_POST(self, request: Request) -> Any:
        body = read_json_object(request)
        for key in body:
            if key != "urls":
                raise bad_request(f"unknown key {key!r} (give urls)", key)
        urls = body.get("urls")
        if not isinstance(urls, list) or not urls:
            raise bad_request("urls must be a non-empty list of absolute http(s) URLs", "urls")
        if len(urls) > MAX_URLS:
            raise bad_request(f"at most {MAX_URLS} urls per job, got {len(urls)}", "urls")
        checked = [check_url(url, f"urls[{index}]") for index, url in enumerate(urls)]
        try:
            job = self.jobs.start(checked)
        except TooManyJobs as error:
            raise APIError(429, "too_many_jobs", str(error)) from None
        return self.accepted(request, job, f"urls={len(checked)}", job.summary(recent=False))
