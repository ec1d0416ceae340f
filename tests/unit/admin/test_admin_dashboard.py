"""``/dashboard`` on the admin site, in memory (the page itself is tested in Chromium:
``tests/integration/test_e2e_dashboard.py``)."""

from __future__ import annotations

import re

import pytest

from speedproxy.admin.dashboard import ASSETS, asset
from speedproxy.admin.site import admin_site
from speedproxy.config import parse_config

from test_admin_site import CONFIG, FakeControl, call

KEYED = CONFIG + "admin: {api_key: s3cret-key}\n"


@pytest.fixture
def site():
    made = admin_site(FakeControl(parse_config(KEYED)), environ={})
    made.timeOut = None
    return made


@pytest.mark.parametrize(
    "path, kind",
    [("/dashboard", "text/html"), ("/dashboard/app.js", "text/javascript"), ("/dashboard/style.css", "text/css")],
)
def test_the_page_is_served_without_the_key(site, path, kind) -> None:
    answer = call(site, "GET", path)
    assert answer.status == 200
    assert answer.headers["content-type"].startswith(kind)
    assert int(answer.headers["content-length"]) == len(answer.body) > 500
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in answer.headers["content-security-policy"]


def test_head_redirect_method_and_unknown_paths(site) -> None:
    head = call(site, "HEAD", "/dashboard")
    assert head.status == 200 and head.body == b""
    slash = call(site, "GET", "/dashboard/")
    assert (slash.status, slash.headers["location"]) == (301, "../dashboard")
    post = call(site, "POST", "/dashboard", {})
    assert (post.status, post.headers["allow"]) == (405, "GET, HEAD")
    # Below /dashboard, anything else is an unknown admin path: behind the key like the others.
    assert call(site, "GET", "/dashboard/app.js/x").status == 401
    assert call(site, "GET", "/dashboard/index.html", headers={"X-API-Key": "s3cret-key"}).status == 404
    assert call(site, "GET", "/dashboard/secret", headers={"X-API-Key": "s3cret-key"}).status == 404


def test_the_page_loads_only_its_own_files() -> None:
    page = asset("index.html").decode()
    assert re.findall(r'(?:src|href)="([^"]+)"', page) == ["data:,", "dashboard/style.css", "dashboard/app.js"]
    assert "<script>" not in page and "style=" not in page  # nothing inline: the CSP allows no inline code
    script = asset("app.js").decode()
    fetched = set(re.findall(r'getJSON\("([^"]+)"', script))
    assert fetched == {"stats", "status", "api/v1/performance/dashboard?limit=8", "cache/info"}
    assert {name for name, _ in ASSETS.values()} == {"index.html", "app.js", "style.css"}
