"""``/api/v1/cache/warmup`` (:mod:`speedproxy.admin.api_cache_warmup`), through the admin site."""

from __future__ import annotations

from typing import Any

import pytest

from admin_cache_support import CacheControl, call, make_site


@pytest.fixture
def control() -> CacheControl:
    return CacheControl()


@pytest.fixture
def site(control) -> Any:
    return make_site(control)


def test_a_job_is_answered_at_once_and_followed(site, control) -> None:
    urls = ["http://h/a", "http://h/b", "http://h/c"]
    answer = call(site, "POST", "/api/v1/cache/warmup", {"urls": urls})
    assert answer.status == 202
    job = answer.json
    assert (job["state"], job["total"], job["done"], job["in_flight"]) == ("running", 3, 0, 3)
    assert job["status_url"] == f"/api/v1/cache/warmup/{job['id']}"
    fanout = control.cache_fanout
    assert [(slot, url) for slot, url, _ in fanout.warms] == [(0, "http://h/a"), (1, "http://h/b"), (0, "http://h/c")]
    fanout.warms[0][2].callback(200)
    fanout.warms[1][2].callback(None)
    progress = call(site, "GET", job["status_url"]).json
    assert (progress["state"], progress["done"], progress["failed"]) == ("running", 2, 1)
    assert [row["url"] for row in progress["recent"]] == ["http://h/a", "http://h/b"]
    fanout.warms[2][2].callback(304)
    done = call(site, "GET", job["status_url"] + "/").json
    assert (done["state"], done["done"], done["failed"]) == ("done", 3, 1)
    listing = call(site, "GET", "/api/v1/cache/warmup").json
    assert [row["id"] for row in listing["jobs"]] == [job["id"]]
    assert "recent" not in listing["jobs"][0]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "urls"),
        ({"urls": []}, "urls"),
        ({"urls": "http://h/a"}, "urls"),
        ({"urls": ["http://h/a", "/b"]}, "urls[1]"),
        ({"urls": ["http://h/a", 3]}, "urls[1]"),
        ({"urls": ["http://h/a"], "speed": 9}, "speed"),
        ({"urls": ["http://h/x"] * 10001}, "urls"),
    ],
)
def test_a_wrong_body_names_the_field(site, control, body, field) -> None:
    answer = call(site, "POST", "/api/v1/cache/warmup", body)
    assert (answer.status, answer.json["field"]) == (400, field)
    assert control.cache_fanout.warms == []


def test_unknown_jobs_are_404(site) -> None:
    answer = call(site, "GET", "/api/v1/cache/warmup/nope")
    assert (answer.status, answer.json["error"]) == (404, "not_found")
    assert call(site, "GET", "/api/v1/cache/warmup/nope/deeper").status == 404
    assert call(site, "DELETE", "/api/v1/cache/warmup").status == 405


def test_too_many_running_jobs_is_429(site) -> None:
    jobs = site.resource.warmups
    jobs.keep = 1
    assert call(site, "POST", "/api/v1/cache/warmup", {"urls": ["http://h/a"]}).status == 202
    answer = call(site, "POST", "/api/v1/cache/warmup", {"urls": ["http://h/b"]})
    assert (answer.status, answer.json["error"]) == (429, "too_many_jobs")
