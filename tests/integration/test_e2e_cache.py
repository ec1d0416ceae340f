"""The HTTP cache end to end: a real origin process, a real ``twistd speedproxy``.

Most tests share one proxy with two workers and a disk tier, configured as
the issue's example (``cache_support.cache_config``), in front of one
scripted origin; each test uses its own paths.  Each worker has its own
memory tier, so a test that expects "the second request is a hit" sends its
requests on one keep-alive connection (:class:`Session`).  Tests that stop
the origin, restart or kill the proxy, or need other settings start their
own.  Every response of a cached route is checked for its Cache-Status
(RFC 9211) and every test checks what the origin received.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from speedproxy.testing import ProxyProcess, RawClient, RawResponse, free_port, path_body, stall, wait_until

from cache_support import (
    API_CACHE,
    Origin,
    Session,
    assert_hit,
    assert_not_stored,
    assert_stored_miss,
    body_of,
    cache_config,
    cache_status,
    cc,
    gated_stream,
    get_once,
    http_date,
    reply,
    run_threads,
    sessions_on_workers,
    validating,
)

#: Sleep this long to let a ``max-age=1`` response go stale.
PAST_ONE_SECOND = 1.1

# -- the shared proxy -------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin(module_stack) -> Origin:
    return Origin(module_stack.backend(name="origin"))


@pytest.fixture(scope="module")
def proxy(module_stack, origin: Origin, tmp_path_factory) -> ProxyProcess:
    disk = tmp_path_factory.mktemp("cache-disk") / "disk"
    config = cache_config(origin.backend, disk_path=str(disk), max_object_size="2MiB")
    # /dead/: a cached route whose only backend refuses connections.
    config["backends"]["dead"] = [{"id": "nobody", "host": "127.0.0.1", "port": free_port()}]
    config["routing"]["dead"] = {"path": "/dead/", "upstream": "dead", "cache": dict(API_CACHE)}
    return module_stack.proxy(config=config)


@pytest.fixture
def uid(request) -> str:
    """A path segment unique to the test (parametrisation included)."""
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")


@pytest.fixture
def session(proxy: ProxyProcess) -> Iterator[Session]:
    with Session(proxy) as made:
        yield made


@pytest.fixture
def pair(proxy: ProxyProcess) -> Iterator[Tuple[Session, Session]]:
    """Two sessions on different workers."""
    one, other = sessions_on_workers(proxy).values()
    try:
        yield one, other
    finally:
        one.close()
        other.close()


def wait_on_disk(other: Session, path: str, *headers: Tuple[str, str]) -> RawResponse:
    """Wait (bounded) until a worker that did not store ``path`` finds it on disk.

    ``only-if-cached`` never goes to the origin: a miss is a 504.
    """
    return wait_until(
        lambda: (lambda r: r if r.status != 504 else None)(other.get(path, cc("only-if-cached"), *headers)),
        5.0,
        f"{path} on disk",
    )


# -- freshness (RFC 9111 4.2.1) ----------------------------------------------------------


def test_s_maxage_wins_over_max_age_and_expires(origin, session, uid):
    path = origin.script(
        f"/{uid}",
        reply(body=b"shared", headers=[cc("max-age=5, s-maxage=100"), ("Date", http_date()), ("Expires", http_date(1000))]),
    )
    assert_stored_miss(session.get(path))
    hit = assert_hit(session.get(path), b"shared")
    assert 97 <= hit.ttl <= 100, str(hit)
    assert origin.count(path) == 1


def test_max_age_wins_over_expires(origin, session, uid):
    path = origin.script(
        f"/{uid}", reply(body=b"x", headers=[cc("max-age=100"), ("Date", http_date()), ("Expires", http_date(-1000))])
    )
    assert_stored_miss(session.get(path))
    hit = assert_hit(session.get(path), b"x")
    assert 97 <= hit.ttl <= 100, str(hit)
    assert origin.count(path) == 1


def test_expires_minus_date(origin, session, uid):
    # Date one minute ago: Expires - Date is 100 s, of which 60 have passed (apparent age).
    path = origin.script(f"/{uid}", reply(body=b"e", headers=[("Date", http_date(-60)), ("Expires", http_date(40))]))
    assert_stored_miss(session.get(path))
    response = session.get(path)
    hit = assert_hit(response, b"e")
    assert 37 <= hit.ttl <= 40, str(hit)
    assert 60 <= int(response.header("Age")) <= 63
    assert origin.count(path) == 1


def test_age_from_upstream_counts(origin, session, uid):
    path = origin.script(f"/{uid}", reply(body=b"aged", headers=[cc("max-age=60"), ("Age", "50")]))
    assert_stored_miss(session.get(path))
    response = session.get(path)
    hit = assert_hit(response, b"aged")
    assert 8 <= hit.ttl <= 10, str(hit)
    assert 50 <= int(response.header("Age")) <= 52
    assert origin.count(path) == 1


def test_expires_in_the_past_is_stale_at_once(origin, session, uid):
    path = origin.script(
        f"/strict/{uid}",
        reply(body=b"old", headers=[("Date", http_date()), ("Expires", http_date(-10))]),
        reply(body=b"new", headers=[cc("max-age=60")]),
    )
    assert_stored_miss(session.get(path))
    response = session.get(path)
    assert response.body == b"new"
    status = cache_status(response)
    assert status.fwd == "stale" and status.fwd_status == 200, str(status)
    assert origin.count(path) == 2


def test_age_grows_on_every_hit(origin, session, uid):
    path = origin.script(f"/{uid}", reply(body=b"a", headers=[cc("max-age=30")]))
    assert_stored_miss(session.get(path))
    first = session.get(path)
    first_status = assert_hit(first, b"a")
    assert int(first.header("Age")) == 0
    time.sleep(PAST_ONE_SECOND)
    second = session.get(path)
    second_status = assert_hit(second, b"a")
    assert int(second.header("Age")) >= 1
    assert second_status.ttl < first_status.ttl
    assert origin.count(path) == 1


# -- heuristic freshness (RFC 9111 4.2.2) --------------------------------------------------


@pytest.mark.parametrize("status, stored", [(200, True), (404, True), (410, True), (302, False), (307, False)])
def test_heuristic_freshness_only_for_heuristically_cacheable_statuses(origin, session, uid, status, stored):
    headers = [("Location", "/elsewhere")] if status in (302, 307) else []
    path = origin.script(f"/{uid}", reply(status, b"h", headers))
    first = session.get(path)
    assert first.status == status
    second = session.get(path)
    assert second.status == status
    if stored:
        assert_stored_miss(first, status)
        hit = assert_hit(second, b"h")
        assert 3590 <= hit.ttl <= 3600, str(hit)  # default_ttl: 1h
        assert origin.count(path) == 1
    else:
        assert_not_stored(first, "no-freshness")
        assert_not_stored(second, "no-freshness")
        assert origin.count(path) == 2


def test_heuristic_from_last_modified_is_a_tenth_of_its_age(origin, session, uid):
    path = origin.script(
        f"/{uid}", reply(body=b"lm", headers=[("Date", http_date()), ("Last-Modified", http_date(-100))])
    )
    assert_stored_miss(session.get(path))
    hit = assert_hit(session.get(path), b"lm")
    assert 8 <= hit.ttl <= 10, str(hit)
    assert origin.count(path) == 1


def test_route_with_default_ttl_0_stores_nothing_heuristically(origin, session, uid):
    heuristic = origin.script(f"/nottl/{uid}-h", reply(body=b"h"))
    explicit = origin.script(f"/nottl/{uid}-e", reply(body=b"e", headers=[cc("max-age=60")]))
    assert_not_stored(session.get(heuristic), "no-freshness")
    assert_not_stored(session.get(heuristic), "no-freshness")
    assert origin.count(heuristic) == 2
    assert_stored_miss(session.get(explicit))
    assert_hit(session.get(explicit), b"e")
    assert origin.count(explicit) == 1


# -- response directives (RFC 9111 5.2.2) -------------------------------------------------


@pytest.mark.parametrize(
    "directives, detail",
    [("no-store, max-age=60", "no-store"), ("private, max-age=60", "private"), ('private="X-Foo", max-age=60', "private")],
)
def test_not_stored(origin, session, uid, directives, detail):
    path = origin.script(f"/{uid}", reply(body=b"p", headers=[cc(directives)]))
    for _ in range(2):
        response = session.get(path)
        assert response.body == b"p"
        status = assert_not_stored(response, detail)
        assert status.fwd == "miss" and status.fwd_status == 200
    assert origin.count(path) == 2


def test_no_cache_response_is_revalidated_on_every_use(origin, session, uid):
    path = origin.script(
        f"/{uid}",
        reply(body=b"v1", headers=[cc("no-cache, max-age=60"), ("ETag", '"nc1"')]),
        validating(b"v1", [cc("no-cache, max-age=60"), ("ETag", '"nc1"')], etag='"nc1"'),
        validating(b"v1", [cc("no-cache, max-age=60"), ("ETag", '"nc1"')], etag='"nc1"'),
        reply(body=b"v2", headers=[cc("no-cache, max-age=60"), ("ETag", '"nc2"')]),
    )
    assert_stored_miss(session.get(path))
    for count in (2, 3):
        response = session.get(path)
        assert response.status == 200 and response.body == b"v1"
        status = cache_status(response)
        assert status.fwd_status == 304, str(status)
        assert origin.count(path) == count
        assert origin.requests_for(path)[-1].header("If-None-Match") == '"nc1"'
    changed = session.get(path)
    assert changed.body == b"v2"
    assert cache_status(changed).fwd_status == 200
    assert origin.count(path) == 4


def test_never_served_stale_when_the_response_forbids_it(origin, session, uid):
    # The api route has stale-while-revalidate and stale-if-error: neither applies.
    paths = {}
    for index, directives in enumerate(("max-age=1, must-revalidate", "max-age=1, proxy-revalidate", "s-maxage=1")):
        paths[directives] = origin.script(
            f"/{uid}-{index}",
            reply(body=b"good", headers=[cc(directives), ("ETag", '"m1"')]),
            reply(503, b"origin down"),
            reply(500, b"origin broken"),
            reply(body=b"better", headers=[cc("max-age=60")]),
        )
        assert_stored_miss(session.get(paths[directives]))
    time.sleep(PAST_ONE_SECOND)
    for directives, path in paths.items():
        down = session.get(path)
        assert down.status == 503 and down.body == b"origin down", directives
        status = cache_status(down)
        assert not status.hit and status.fwd_status == 503, (directives, str(status))
        # Not even when the client accepts stale responses.
        broken = session.get(path, cc("max-stale=3600, stale-if-error=3600"))
        assert broken.status == 500 and broken.body == b"origin broken", directives
        assert not cache_status(broken).hit
        replaced = session.get(path)
        assert replaced.status == 200 and replaced.body == b"better"
        status = cache_status(replaced)
        assert status.fwd == "stale" and status.fwd_status == 200 and status.stored, (directives, str(status))
        assert [request.header("If-None-Match") for request in origin.requests_for(path)] == [None, '"m1"', '"m1"', '"m1"']


@pytest.mark.parametrize(
    "directives, stored",
    [
        ("max-age=60", False),
        ("public, max-age=60", True),
        ("s-maxage=60", True),
        ("max-age=60, must-revalidate", True),
    ],
)
def test_authorization(origin, session, uid, directives, stored):
    path = origin.script(f"/{uid}", reply(body=b"secret", headers=[cc(directives)]))
    auth = ("Authorization", "Bearer abc")
    first = session.get(path, auth)
    second = session.get(path, auth)
    assert first.body == second.body == b"secret"
    if stored:
        assert_stored_miss(first)
        assert_hit(second)
        assert origin.count(path) == 1
    else:
        assert_not_stored(first, "authorization")
        assert_not_stored(second, "authorization")
        assert origin.count(path) == 2
        assert all(request.header("Authorization") == "Bearer abc" for request in origin.requests_for(path))


def test_set_cookie_only_stored_when_explicitly_shared(origin, session, uid):
    cookie = origin.script(f"/{uid}-c", reply(body=b"c", headers=[cc("max-age=60"), ("Set-Cookie", "a=1")]))
    public = origin.script(f"/{uid}-p", reply(body=b"p", headers=[cc("public, max-age=60"), ("Set-Cookie", "a=1")]))
    assert_not_stored(session.get(cookie))
    assert_not_stored(session.get(cookie))
    assert origin.count(cookie) == 2
    assert_stored_miss(session.get(public))
    hit = session.get(public)
    assert_hit(hit, b"p")
    assert origin.count(public) == 1


# -- request directives (RFC 9111 5.2.1) ----------------------------------------------------


@pytest.mark.parametrize("directive", ["no-cache", "max-age=0"])
def test_request_no_cache_and_max_age_0_revalidate(origin, session, uid, directive):
    headers = [cc("max-age=60"), ("ETag", '"r1"')]
    path = origin.script(
        f"/{uid}", reply(body=b"r", headers=headers), validating(b"r", headers, etag='"r1"')
    )
    assert_stored_miss(session.get(path))
    response = session.get(path, cc(directive))
    assert response.status == 200 and response.body == b"r"
    assert cache_status(response).fwd_status == 304
    assert origin.count(path) == 2
    assert origin.requests_for(path)[1].header("If-None-Match") == '"r1"'
    assert_hit(session.get(path), b"r")
    assert origin.count(path) == 2


def test_request_no_cache_says_fwd_request(origin, session, uid):
    headers = [cc("max-age=60"), ("ETag", '"q1"')]
    path = origin.script(f"/{uid}", reply(body=b"q", headers=headers), validating(b"q", headers, etag='"q1"'))
    session.get(path)
    assert cache_status(session.get(path, cc("no-cache"))).fwd == "request"


def test_request_max_age_and_min_fresh(origin, session, uid):
    headers = [cc("max-age=60"), ("ETag", '"f1"')]
    path = origin.script(f"/{uid}", reply(body=b"f", headers=headers), reply(body=b"f2", headers=[cc("max-age=60")]))
    assert_stored_miss(session.get(path))
    assert_hit(session.get(path, cc("max-age=1000")), b"f")
    assert_hit(session.get(path, cc("min-fresh=30")), b"f")
    assert origin.count(path) == 1
    response = session.get(path, cc("min-fresh=120"))  # fresh for 60 s only
    assert response.body == b"f2"
    assert cache_status(response).fwd_status == 200
    assert origin.count(path) == 2
    assert origin.requests_for(path)[1].header("If-None-Match") == '"f1"'


def test_request_max_stale(origin, session, uid):
    headers = [cc("max-age=1"), ("ETag", '"s1"')]
    path = origin.script(
        f"/strict/{uid}",
        reply(body=b"s", headers=headers),
        reply(body=b"s2", headers=[cc("max-age=60")]),
    )
    assert_stored_miss(session.get(path))
    time.sleep(PAST_ONE_SECOND)
    for directive in ("max-stale=60", "max-stale"):
        response = session.get(path, cc(directive))
        assert response.body == b"s"
        status = cache_status(response)
        assert status.hit and status.detail == "max-stale" and status.ttl < 0, str(status)
    assert origin.count(path) == 1
    response = session.get(path)  # stale, not accepted: revalidated
    assert response.body == b"s2" and cache_status(response).fwd_status == 200
    assert origin.count(path) == 2
    assert origin.requests_for(path)[1].header("If-None-Match") == '"s1"'


def test_only_if_cached(origin, session, uid):
    path = origin.script(f"/strict/{uid}", reply(body=b"o", headers=[cc("max-age=1")]))
    missing = session.get(path, cc("only-if-cached"))
    assert missing.status == 504
    status = cache_status(missing)
    assert not status.hit and status.detail == "only-if-cached", str(status)
    assert origin.count(path) == 0
    assert_stored_miss(session.get(path))
    assert_hit(session.get(path, cc("only-if-cached")), b"o")
    time.sleep(PAST_ONE_SECOND)
    stale = session.get(path, cc("only-if-cached"))
    assert stale.status == 504
    assert not cache_status(stale).hit
    assert origin.count(path) == 1


def test_request_no_store_bypasses(origin, session, uid):
    path = origin.script(f"/{uid}", reply(body=b"n", headers=[cc("max-age=60")]))
    bypass = session.get(path, cc("no-store"))
    assert bypass.body == b"n"
    assert_not_stored(bypass)
    assert_stored_miss(session.get(path))
    assert origin.count(path) == 2


# -- Vary (RFC 9111 4.1) ---------------------------------------------------------------------


def test_vary_stores_one_variant_per_request_header(origin, session, uid):
    def by_encoding(exchange):
        encoding = exchange.request.header("Accept-Encoding") or "identity"
        exchange.send(200, b"body for " + encoding.encode(), [cc("max-age=60"), ("Vary", "Accept-Encoding")])

    path = origin.script(f"/{uid}", by_encoding)
    gzip, br = ("Accept-Encoding", "gzip"), ("Accept-Encoding", "br")
    assert_stored_miss(session.get(path, gzip))
    second = session.get(path, br)
    assert second.body == b"body for br"
    assert not cache_status(second).hit
    assert origin.count(path) == 2
    assert_hit(session.get(path, gzip), b"body for gzip")
    assert_hit(session.get(path, br), b"body for br")
    assert_hit(session.get(path, gzip), b"body for gzip")
    assert origin.count(path) == 2
    identity = session.get(path)
    assert identity.body == b"body for identity" and not cache_status(identity).hit
    assert [request.header("Accept-Encoding") for request in origin.requests_for(path)] == ["gzip", "br", None]


def test_vary_star_is_never_served_from_cache(origin, session, uid):
    path = origin.script(f"/{uid}", reply(body=b"*", headers=[cc("max-age=60"), ("Vary", "*")]))
    for _ in range(3):
        response = session.get(path)
        assert response.body == b"*"
        assert_not_stored(response, "vary-star")
    assert origin.count(path) == 3


# -- validation (RFC 9111 4.3) ---------------------------------------------------------------


def test_stale_entry_revalidated_and_refreshed_by_304(origin, session, uid):
    etag_path = origin.script(
        f"/strict/{uid}-etag",
        reply(body=b"etag body", headers=[cc("max-age=1"), ("ETag", '"e1"'), ("X-Version", "1")]),
        validating(
            b"etag body",
            etag='"e1"',
            headers_304=[cc("max-age=60"), ("ETag", '"e1"'), ("X-Version", "2")],
        ),
    )
    modified = http_date(-3600)
    lm_path = origin.script(
        f"/strict/{uid}-lm",
        reply(body=b"lm body", headers=[cc("max-age=1"), ("Last-Modified", modified)]),
        validating(b"lm body", last_modified=modified, headers_304=[cc("max-age=60"), ("X-Version", "2")]),
    )
    changed_path = origin.script(
        f"/strict/{uid}-changed",
        reply(body=b"old body", headers=[cc("max-age=1"), ("ETag", '"c1"')]),
        reply(body=b"new body", headers=[cc("max-age=60"), ("ETag", '"c2"')]),
    )
    for path in (etag_path, lm_path, changed_path):
        assert_stored_miss(session.get(path))
    time.sleep(PAST_ONE_SECOND)

    response = session.get(etag_path)
    assert response.status == 200 and response.body == b"etag body"
    assert response.header("X-Version") == "2"
    status = cache_status(response)
    assert status.fwd == "stale" and status.fwd_status == 304 and 55 <= status.ttl <= 60, str(status)
    assert origin.requests_for(etag_path)[1].header("If-None-Match") == '"e1"'
    hit = session.get(etag_path)
    assert_hit(hit, b"etag body")
    assert hit.header("X-Version") == "2" and hit.header("Cache-Control") == "max-age=60"
    assert origin.count(etag_path) == 2

    response = session.get(lm_path)
    assert response.body == b"lm body" and response.header("X-Version") == "2"
    assert cache_status(response).fwd_status == 304
    assert origin.requests_for(lm_path)[1].header("If-Modified-Since") == modified
    assert_hit(session.get(lm_path), b"lm body")
    assert origin.count(lm_path) == 2

    response = session.get(changed_path)
    assert response.body == b"new body"
    status = cache_status(response)
    assert status.fwd == "stale" and status.fwd_status == 200 and status.stored, str(status)
    assert origin.requests_for(changed_path)[1].header("If-None-Match") == '"c1"'
    hit = session.get(changed_path)
    assert_hit(hit, b"new body")
    assert hit.header("ETag") == '"c2"'
    assert origin.count(changed_path) == 2


def test_client_conditionals_answered_from_the_cache(origin, session, uid):
    modified = http_date(-3600)
    path = origin.script(
        f"/{uid}", reply(body=b"cond", headers=[cc("max-age=60"), ("ETag", '"c1"'), ("Last-Modified", modified)])
    )
    assert_stored_miss(session.get(path))
    for header in (("If-None-Match", '"c1"'), ("If-None-Match", 'W/"c1"'), ("If-None-Match", '"x", "c1"'),
                   ("If-Modified-Since", modified), ("If-Modified-Since", http_date(-60))):
        response = session.get(path, header)
        assert response.status == 304, header
        assert response.body == b""
        assert response.header("ETag") == '"c1"'
        assert cache_status(response).hit
    for header in (("If-None-Match", '"other"'), ("If-Modified-Since", http_date(-7200))):
        response = session.get(path, header)
        assert response.status == 200 and response.body == b"cond", header
        assert_hit(response)
    assert origin.count(path) == 1


# -- invalidation (RFC 9111 4.4) -------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_unsafe_method_invalidates_the_target(origin, pair, uid, method):
    session, other = pair
    path = origin.script(
        f"/{uid}",
        reply(body=b"v1", headers=[cc("max-age=60")]),
        reply(200, b"done"),
        reply(body=b"v2", headers=[cc("max-age=60")]),
    )
    assert_stored_miss(session.get(path))
    wait_on_disk(other, path)  # see test_invalidation_right_after_a_store_sticks
    assert_hit(session.get(path), b"v1")
    changed = session.request(method, path, body=b"x")
    assert changed.status == 200 and changed.body == b"done"
    after = session.get(path)
    assert after.body == b"v2"
    assert_stored_miss(after)
    assert [request.method for request in origin.requests_for(path)] == ["GET", method, "GET"]


def test_invalidation_right_after_a_store_sticks(origin, session, uid):
    stale = []
    for index in range(300):
        path = origin.script(
            f"/{uid}-{index}",
            reply(body=b"v1", headers=[cc("max-age=60")]),
            reply(204),
            reply(body=b"v2", headers=[cc("max-age=60")]),
        )
        assert_stored_miss(session.get(path))
        assert session.request("POST", path, body=b"x").status == 204
        if session.get(path).body != b"v2":
            stale.append(path)
    assert not stale, f"{len(stale)} of 300 invalidated objects served again"


def test_failed_unsafe_request_does_not_invalidate(origin, session, uid):
    path = origin.script(f"/{uid}", reply(body=b"v1", headers=[cc("max-age=60")]), reply(500, b"failed"))
    assert_stored_miss(session.get(path))
    assert session.request("POST", path, body=b"x").status == 500
    assert_hit(session.get(path), b"v1")
    assert origin.count(path) == 2


def test_location_and_content_location_invalidated_on_the_same_origin(origin, pair, uid):
    session, other = pair
    targets = {}
    for name in ("location", "content-location", "foreign"):
        targets[name] = origin.script(
            f"/{uid}-{name}",
            reply(body=b"v1", headers=[cc("max-age=60")]),
            reply(body=b"v2", headers=[cc("max-age=60")]),
        )
    for path in targets.values():
        assert_stored_miss(session.get(path))
        wait_on_disk(other, path)
    post = origin.script(
        f"/{uid}-post",
        reply(
            201,
            b"created",
            [
                ("Location", targets["location"]),
                ("Content-Location", "http://test.local" + targets["content-location"]),
            ],
        ),
        reply(200, b"moved", [("Location", "http://other.example" + targets["foreign"])]),
    )
    assert session.request("POST", post, body=b"x").status == 201
    assert session.request("POST", post, body=b"x").status == 200
    for name in ("location", "content-location"):
        response = session.get(targets[name])
        assert response.body == b"v2", name
        assert_stored_miss(response)
    assert_hit(session.get(targets["foreign"]), b"v1")


def test_invalidation_reaches_every_worker(origin, pair, uid):
    one, other = pair
    version = {"n": 1}

    def current(exchange):
        if exchange.request.method == "GET":
            exchange.send(200, b"v%d" % version["n"], [cc("max-age=60")])
        else:
            version["n"] += 1
            exchange.send(204, b"")

    path = origin.script(f"/{uid}", current)
    assert_stored_miss(one.get(path))
    assert_hit(wait_on_disk(other, path), b"v1")  # now in both workers' memory
    assert_hit(other.get(path), b"v1")
    assert one.request("PUT", path, body=b"new").status == 204
    assert one.get(path).body == b"v2"  # the worker that relayed the PUT: at once
    # The others are told through the master (DropKeys), a few milliseconds
    # after the answer: bounded, not immediate.
    wait_until(lambda: other.get(path).body == b"v2", 5.0, "the other worker to drop its copy")


# -- ranges and HEAD ------------------------------------------------------------------------------


def test_ranges_from_a_stored_object(origin, session, uid):
    path = origin.script(f"/{uid}", path_body(1000, [cc("max-age=60")]))
    body = body_of(path, 1000)
    full = session.get(path)
    assert full.body == body
    assert_stored_miss(full)
    for spec, first, last in (("10-19", 10, 19), ("-5", 995, 999), ("990-", 990, 999), ("0-0", 0, 0), ("900-5000", 900, 999)):
        response = session.get(path, ("Range", f"bytes={spec}"))
        assert response.status == 206, spec
        assert response.header("Content-Range") == f"bytes {first}-{last}/1000"
        assert response.body == body[first : last + 1]
        assert int(response.header("Content-Length")) == last - first + 1
        assert cache_status(response).hit

    multi = session.get(path, ("Range", "bytes=0-9,500-509"))
    assert multi.status == 206
    content_type = multi.header("Content-Type")
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    parts = [part for part in multi.body.split(b"--" + boundary) if part.strip(b"\r\n") not in (b"", b"--")]
    assert len(parts) == 2
    for part, (first, last) in zip(parts, ((0, 9), (500, 509))):
        head, _, data = part.partition(b"\r\n\r\n")
        assert b"Content-Range: bytes %d-%d/1000" % (first, last) in head
        assert data[: last - first + 1] == body[first : last + 1]
        assert data[last - first + 1 :] in (b"", b"\r\n")
    assert cache_status(multi).hit

    unsatisfiable = session.get(path, ("Range", "bytes=2000-"))
    assert unsatisfiable.status == 416
    assert unsatisfiable.header("Content-Range") == "bytes */1000"
    assert cache_status(unsatisfiable).hit
    assert origin.count(path) == 1


def test_range_of_a_missing_object_goes_to_the_origin(origin, session, uid):
    path = origin.script(f"/{uid}", path_body(100, [cc("max-age=60")]))
    response = session.get(path, ("Range", "bytes=0-9"))
    assert response.status == 200  # the origin ignores Range
    assert cache_status(response).fwd == "miss"
    assert origin.requests_for(path)[0].header("Range") == "bytes=0-9"


def test_head_from_a_stored_get(origin, session, uid):
    path = origin.script(f"/{uid}", path_body(1234, [cc("max-age=60")]))
    assert_stored_miss(session.get(path))
    head = session.request("HEAD", path)
    assert head.status == 200
    assert head.header("Content-Length") == "1234"
    assert_hit(head)
    assert session.client.read_available(0.2) == b""  # no body followed
    assert_hit(session.get(path), body_of(path, 1234))
    assert [request.method for request in origin.requests_for(path)] == ["GET"]


def test_head_on_a_miss_is_forwarded_and_not_stored(origin, session, uid):
    path = origin.script(f"/{uid}", path_body(100, [cc("max-age=60")]))
    head = session.request("HEAD", path)
    assert head.status == 200 and head.header("Content-Length") == "100"
    assert cache_status(head).fwd == "miss" and not cache_status(head).stored
    assert_stored_miss(session.get(path))
    assert [request.method for request in origin.requests_for(path)] == ["HEAD", "GET"]


# -- Cache-Status on every response --------------------------------------------------------------------


def test_cache_status_on_options(origin, session, uid):
    path = origin.script(f"/{uid}", reply(200, b"ok", [cc("max-age=60")]))
    response = session.request("OPTIONS", path)
    assert response.status == 200
    status = cache_status(response)
    assert not status.hit and status.fwd == "method" and status.fwd_status == 200, str(status)
    assert origin.count(path) == 1
    assert_stored_miss(session.get(path))


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_cache_status_on_unsafe_methods(origin, session, uid, method):
    path = origin.script(f"/{uid}", reply(200, b"ok"))
    response = session.request(method, path, body=b"x")
    assert response.status == 200
    status = cache_status(response)
    assert not status.hit and status.fwd == "method" and status.fwd_status == 200, str(status)


def test_cache_status_on_proxy_errors(proxy, uid):
    response = get_once(proxy, f"/dead/{uid}")
    assert response.status in (502, 503)
    status = cache_status(response)
    assert not status.hit and status.fwd == "miss", str(status)


def test_cache_status_on_uncacheable_errors(origin, session, uid):
    path = origin.script(f"/{uid}", reply(500, b"boom"))
    response = session.get(path)
    assert response.status == 500 and response.body == b"boom"
    status = assert_not_stored(response)
    assert status.fwd == "miss" and status.fwd_status == 500


# -- stale-while-revalidate (RFC 5861 3) --------------------------------------------------------


def test_stale_while_revalidate_serves_stale_and_refreshes_once(origin, session, uid):
    path = origin.script(
        f"/{uid}",
        reply(body=b"v1", headers=[cc("max-age=1"), ("ETag", '"w1"')]),
        reply(body=b"v2", headers=[cc("max-age=60"), ("ETag", '"w2"')], delay=0.5),
    )
    assert_stored_miss(session.get(path))
    time.sleep(PAST_ONE_SECOND)
    started = time.monotonic()
    for _ in range(5):
        response = session.get(path)
        assert response.body == b"v1"
        status = cache_status(response)
        assert status.hit and status.detail == "stale-while-revalidate" and status.ttl < 0, str(status)
    assert time.monotonic() - started < 0.4  # not waiting for the 0.5 s refresh
    refresh = origin.wait_count(path, 2)[1]
    assert refresh.header("If-None-Match") == '"w1"'
    fresh = wait_until(lambda: (lambda r: r if r.body == b"v2" else None)(session.get(path)), 5.0, "the refreshed body")
    hit = assert_hit(fresh, b"v2")
    assert hit.ttl >= 55
    assert origin.count(path) == 2


# -- stale-if-error (RFC 5861 4) -----------------------------------------------------------------


def test_stale_if_error_on_origin_errors(origin, session, uid):
    paths = {}
    for status in (500, 502, 503, 504):
        paths[status] = origin.script(
            f"/sie/{uid}-{status}",
            reply(body=b"good", headers=[cc("max-age=1")]),
            reply(status, b"error %d" % status),
        )
        assert_stored_miss(session.get(paths[status]))
    forbidden = origin.script(
        f"/sie/{uid}-mr", reply(body=b"good", headers=[cc("max-age=1, must-revalidate")]), reply(503, b"down")
    )
    assert_stored_miss(session.get(forbidden))
    time.sleep(PAST_ONE_SECOND)
    for status, path in paths.items():
        response = session.get(path)
        assert response.status == 200 and response.body == b"good", status
        served = cache_status(response)
        assert served.hit and served.fwd == "stale" and served.fwd_status == status, str(served)
        assert served.detail == "stale-if-error"
        assert origin.count(path) == 2
    response = session.get(forbidden)
    assert response.status == 503 and response.body == b"down"
    assert not cache_status(response).hit


@pytest.fixture
def fragile(stack) -> Origin:
    """An origin for one test (it gets stopped)."""
    return Origin(stack.backend(name="fragile"))


def test_stale_if_error_when_the_origin_is_gone(stack, fragile, uid):
    served = fragile.script(f"/sie/{uid}", reply(body=b"good", headers=[cc("max-age=1")]))
    forbidden = fragile.script(f"/sie/{uid}-mr", reply(body=b"good", headers=[cc("max-age=1, must-revalidate")]))
    never = fragile.script(f"/sie/{uid}-never", reply(body=b"x", headers=[cc("max-age=60")]))
    proxy = stack.proxy(config=cache_config(fragile.backend))
    with Session(proxy) as session:
        assert_stored_miss(session.get(served))
        assert_stored_miss(session.get(forbidden))
        time.sleep(PAST_ONE_SECOND)
        fragile.backend.stop()
        response = session.get(served)
        assert response.status == 200 and response.body == b"good"
        status = cache_status(response)
        assert status.hit and status.fwd == "stale" and status.detail == "stale-if-error", str(status)
        response = session.get(forbidden)
        assert response.status in (502, 503, 504)
        assert response.body != b"good"
        assert "hit" not in (response.header("Cache-Status") or "")
        response = session.get(never)
        assert response.status in (502, 503, 504)
    assert fragile.count(never) == 0


def test_stale_if_error_when_the_origin_times_out(stack, fragile, uid):
    path = fragile.script(f"/sie/{uid}", reply(body=b"good", headers=[cc("max-age=1")]), stall())
    proxy = stack.proxy(config=cache_config(fragile.backend, upstream_read_timeout="500ms"))
    with Session(proxy) as session:
        assert_stored_miss(session.get(path))
        time.sleep(PAST_ONE_SECOND)
        started = time.monotonic()
        response = session.get(path)
        assert response.status == 200 and response.body == b"good"
        assert time.monotonic() - started < 3.0
        status = cache_status(response)
        assert status.hit and status.fwd == "stale" and status.detail == "stale-if-error", str(status)
    assert fragile.count(path) == 2


# -- coalescing (one origin request per key) ------------------------------------------------------


@pytest.fixture(scope="module")
def solo_origin(module_stack) -> Origin:
    return Origin(module_stack.backend(name="solo-origin"))


@pytest.fixture(scope="module")
def solo(module_stack, solo_origin: Origin) -> ProxyProcess:
    """One worker, memory only: every request meets the same cache."""
    return module_stack.proxy(config=cache_config(solo_origin.backend, workers=1))


def test_concurrent_misses_collapse_into_one_streamed_origin_request(solo, solo_origin, uid):
    proxy, fragile = solo, solo_origin
    clients = 20
    body = body_of(f"/{uid}", 256 * 1024)
    gate = threading.Event()
    path = fragile.script(f"/{uid}", gated_stream(body, 4, gate, delay=0.5, headers=[cc("max-age=60")]))
    first_bytes = [threading.Event() for _ in range(clients)]

    def client(index):
        with RawClient(*proxy.address) as raw:
            raw.request("GET", path)
            head = raw.read_head()
            length = int(head.header("Content-Length"))
            received = b""
            while len(received) < length:
                data = raw.recv_some()
                assert data, f"client {index}: connection closed after {len(received)} bytes"
                received += data
                first_bytes[index].set()
            return head, received

    results: List = []
    runner = threading.Thread(target=lambda: results.append(run_threads(client, clients)), daemon=True)
    runner.start()
    try:
        # Every client has bytes of the body while the origin still holds the rest.
        wait_until(lambda: all(event.is_set() for event in first_bytes), 10.0, "first bytes at every client")
        assert fragile.count(path) == 1
    finally:
        gate.set()
    runner.join(20.0)
    assert results, "clients did not finish"
    statuses = []
    for head, received in results[0]:
        assert head.status == 200
        assert hashlib.sha256(received).digest() == hashlib.sha256(body).digest()
        statuses.append(cache_status(head))
    assert fragile.count(path) == 1
    assert sum(status.stored for status in statuses) == 1, [str(status) for status in statuses]
    assert all(status.stored or status.collapsed for status in statuses), [str(status) for status in statuses]
    assert all(status.fwd == "miss" and status.fwd_status == 200 for status in statuses)
    assert not fragile.backend.errors


def test_uncacheable_response_releases_waiting_clients_to_the_origin(solo, solo_origin, uid):
    proxy, fragile = solo, solo_origin
    clients, delay = 20, 0.5
    path = fragile.script(f"/{uid}", reply(body=b"private", headers=[cc("no-store")], delay=delay))
    started = time.monotonic()
    responses = run_threads(lambda index: get_once(proxy, path), clients)
    elapsed = time.monotonic() - started
    assert all(response.status == 200 and response.body == b"private" for response in responses)
    assert fragile.count(path) == clients
    assert elapsed < 4 * delay, f"{elapsed:.2f}s: waiting clients went to the origin one after another"
    assert fragile.max_in_flight(path) >= clients // 2
    # The first response told the cache that the key cannot be stored.
    assert any(response.header("Cache-Status") for response in responses)
    for response in responses:
        if response.header("Cache-Status"):
            assert_not_stored(response, "no-store")


def test_released_requests_get_cache_status(solo, solo_origin, uid):
    proxy, fragile = solo, solo_origin
    path = fragile.script(f"/{uid}", reply(body=b"private", headers=[cc("no-store")], delay=0.5))
    responses = run_threads(lambda index: get_once(proxy, path), 3)
    assert fragile.count(path) == 3
    for response in responses:
        assert response.body == b"private"
        assert_not_stored(response, "no-store")


# -- the cache key -------------------------------------------------------------------------------------


def test_ignored_query_parameters_share_an_entry(origin, session, uid):
    def by_query(exchange):
        exchange.send(200, exchange.request.path.encode(), [cc("max-age=60")])

    path = origin.script(f"/{uid}", by_query)
    first = session.get(f"{path}?a=1&sig=AAA")
    assert_stored_miss(first)
    assert_hit(session.get(f"{path}?a=1&sig=BBB"), first.body)
    assert_hit(session.get(f"{path}?a=1"), first.body)
    other = session.get(f"{path}?a=2&sig=AAA")
    assert other.body == f"{path}?a=2&sig=AAA".encode()
    assert_stored_miss(other)
    assert_stored_miss(session.get(f"{path}?a=1&b=2"))
    assert [request.path for request in origin.requests_for(path)] == [
        f"{path}?a=1&sig=AAA",  # the origin gets the query as sent
        f"{path}?a=2&sig=AAA",
        f"{path}?a=1&b=2",
    ]


# -- sizes -------------------------------------------------------------------------------------------------


def test_one_mebibyte_object_intact_through_the_cache(origin, session, uid):
    path = origin.script(f"/{uid}", path_body(1 << 20, [cc("max-age=60")]))
    digest = hashlib.sha256(body_of(path, 1 << 20)).hexdigest()
    miss = session.get(path)
    assert_stored_miss(miss)
    assert hashlib.sha256(miss.body).hexdigest() == digest
    hit = session.get(path)
    assert_hit(hit)
    assert hashlib.sha256(hit.body).hexdigest() == digest
    assert origin.count(path) == 1
    # From the disk tier: test_objects_stored_by_one_worker_are_found_by_the_other_on_disk.


@pytest.mark.parametrize("chunked", [False, True])
def test_object_over_max_object_size_is_relayed_not_stored(origin, session, uid, chunked):
    size = 3 << 20  # max_object_size: 2MiB
    path = origin.script(f"/{uid}", path_body(size, [cc("max-age=60")], chunked=chunked))
    digest = hashlib.sha256(body_of(path, size)).hexdigest()
    for count in (1, 2):
        response = session.get(path)
        assert response.status == 200 and not response.truncated
        assert hashlib.sha256(response.body).hexdigest() == digest
        status = cache_status(response)
        assert not status.hit and status.fwd == "miss", str(status)
        if not chunked:
            assert status.detail == "size" and not status.stored, str(status)
        assert origin.count(path) == count


@pytest.mark.parametrize("size", [100, 1 << 20])
def test_objects_stored_by_one_worker_are_found_by_the_other_on_disk(origin, pair, uid, size):
    one, other = pair
    path = origin.script(f"/{uid}", path_body(size, [cc("max-age=60")]))
    body = body_of(path, size)
    stored = one.get(path)
    assert_stored_miss(stored)
    assert stored.body == body
    assert_hit(wait_on_disk(other, path), body)  # disk writes show up asynchronously
    assert_hit(other.get(path), body)  # now in that worker's memory tier too
    assert origin.count(path) == 1


# -- the disk tier across restarts, crashes and failures ---------------------------------------------


SMALL_SIZES = (10, 1000, 100_000, 900_000)
LARGE_SIZES = (1 << 20, 2 << 20)  # stored as a file each (disk pack_threshold: 1 MiB)


def _store_then_restart(stack, origin, uid, disk_path, sizes):
    """Store objects of ``sizes``, SIGTERM the proxy, start another on the same
    config; return ``{path: response of the new proxy}`` (a new connection each)."""
    paths = [origin.script(f"/{uid}-{index}", path_body(size, [cc("max-age=3600")])) for index, size in enumerate(sizes)]
    config = cache_config(origin.backend, disk_path=disk_path)
    first = stack.proxy(config=config)
    with Session(first) as session:
        for path in paths:
            assert_stored_miss(session.get(path))
    assert first.stop() == 0
    second = stack.proxy(config=config)
    return {path: get_once(second, path) for path in paths}


@pytest.fixture(scope="module")
def restarted(module_stack, tmp_path_factory):
    """Objects stored on disk by a proxy, then asked of its successor."""
    origin = Origin(module_stack.backend(name="restart-origin"))
    disk = tmp_path_factory.mktemp("restart") / "disk"
    return origin, _store_then_restart(module_stack, origin, "restart", str(disk), SMALL_SIZES + LARGE_SIZES)


def _assert_served_from_disk(origin, responses, sizes):
    for path, response in responses.items():
        if len(response.body) in sizes:
            assert response.status == 200 and response.body == body_of(path, len(response.body))
            assert_hit(response)
            assert origin.count(path) == 1, path


def test_disk_objects_survive_a_restart(restarted):
    origin, responses = restarted
    _assert_served_from_disk(origin, responses, SMALL_SIZES)


def test_large_disk_objects_survive_a_restart(restarted):
    origin, responses = restarted
    _assert_served_from_disk(origin, responses, LARGE_SIZES)


def test_without_disk_path_a_restart_starts_empty(stack, fragile, uid):
    responses = _store_then_restart(stack, fragile, uid, None, SMALL_SIZES)
    for path, response in responses.items():
        assert response.body == body_of(path, len(response.body))
        assert_stored_miss(response)
        assert fragile.count(path) == 2


def test_kill_9_while_writing_never_corrupts(stack, fragile, uid, tmp_path):
    count, size, clients = 200, 64 * 1024, 8
    paths = [fragile.script(f"/{uid}-{index}", path_body(size, [cc("max-age=3600")])) for index in range(count)]
    config = cache_config(fragile.backend, disk_path=str(tmp_path / "disk"))
    victim = stack.proxy(config=config)
    done: List[str] = []
    lock = threading.Lock()
    killed = threading.Event()

    def load(client):
        try:
            with Session(victim, timeout=5.0) as session:
                for path in paths[client::clients]:
                    if killed.is_set():
                        return
                    response = session.get(path)
                    if response.truncated and killed.is_set():
                        return
                    assert response.status == 200 and response.body == body_of(path, size), f"{path}: corrupt body"
                    with lock:
                        done.append(path)
        except (OSError, ConnectionError):
            assert killed.is_set()

    outcome: List[BaseException] = []

    def run():
        try:
            run_threads(load, clients, timeout=30.0)
        except BaseException as error:  # reported below
            outcome.append(error)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    wait_until(lambda: len(done) >= count // 2, 20.0, "half the objects fetched")
    pids = victim.pids()
    killed.set()
    for pid in pids:  # master and workers at once
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    victim.wait(10.0)
    runner.join(35.0)
    assert not runner.is_alive()
    if outcome:
        raise outcome[0]
    wait_until(lambda: not any(_alive(pid) for pid in pids), 5.0, "killed processes gone")

    survivor = stack.proxy(config=config)
    hits = 0
    with Session(survivor) as session:
        for path in paths:
            response = session.get(path)
            assert response.status == 200 and not response.truncated
            assert response.body == body_of(path, size), f"{path}: corrupt body after the crash"
            hits += cache_status(response).hit
    assert hits > 0, "nothing committed before the kill was found again"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def tiny_filesystem(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root), unmounted at teardown."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_full_disk_stops_storing_and_keeps_proxying(stack, fragile, uid, tiny_filesystem):
    size = 300 * 1024
    paths = [fragile.script(f"/{uid}-{index}", path_body(size, [cc("max-age=3600")])) for index in range(10)]
    proxy = stack.proxy(config=cache_config(fragile.backend, disk_path=str(tiny_filesystem / "cache"), workers=1))
    try:
        with Session(proxy) as session:
            for path in paths:
                response = session.get(path)
                assert response.status == 200 and response.body == body_of(path, size)
                assert_stored_miss(response)
            line = proxy.wait_for_log("not storing for now", 5.0)
            assert str(tiny_filesystem / "cache") in line
            # Still proxying, and the memory tier still answers.
            for path in paths:
                response = session.get(path)
                assert response.body == body_of(path, size)
                assert_hit(response)
        assert sum(fragile.count(path) for path in paths) == len(paths)
        assert proxy.log_text().count("not storing for now") == 1, proxy.log_tail()
    finally:
        proxy.stop()


def test_disk_path_that_cannot_be_created(stack, fragile, uid, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    path = fragile.script(f"/{uid}", reply(body=b"ok", headers=[cc("max-age=60")]))
    proxy = stack.proxy(config=cache_config(fragile.backend, disk_path=str(blocker / "cache")))
    line = proxy.wait_for_log("disk cache", 5.0)
    assert str(blocker / "cache") in line and "not storing" in line
    with Session(proxy) as session:
        response = session.get(path)
        assert response.status == 200 and response.body == b"ok"
        assert_stored_miss(response)  # in the memory tier
        assert_hit(session.get(path), b"ok")
    assert fragile.count(path) == 1
    assert proxy.log_text().count(f"disk cache {blocker / 'cache'}") <= 2  # once per worker


@pytest.mark.parametrize("size", [1024, 100 * 1024, 2 * 1024 * 1024], ids=["1KiB", "100KiB", "2MiB"])
def test_disk_only_hits_send_the_whole_body(module_stack, tmp_path, size):
    """memory_size: 0: every hit comes from the disk tier (packed, or sendfile for a file of its own)."""
    from speedproxy.testing import backend_entry, path_pattern

    origin = module_stack.backend(path_body(size, [("Cache-Control", "max-age=600")]), name=f"disk-only-{size}")
    config = {
        "server": {"workers": 1},
        "cache": {"memory_size": 0, "disk_path": str(tmp_path / "cache")},
        "backends": {"default": [backend_entry(origin, id="o")]},
        "routing": {"default": {"path": "/", "upstream": "default", "cache": {"enabled": True}}},
    }
    proxy = module_stack.proxy(config=config)
    expected = path_pattern("/obj", size)
    with RawClient(*proxy.address) as client:
        client.request("GET", "/obj")
        first = client.read_response()
    assert first.body == expected
    hits = 0

    def hit() -> bool:
        nonlocal hits
        with RawClient(*proxy.address) as client:
            client.request("GET", "/obj")
            response = client.read_response()
        assert response.body == expected, (len(response.body), response.header("Cache-Status"))
        if response.header("Cache-Status").startswith("speedproxy; hit"):
            hits += 1
        return hits >= 3

    wait_until(hit, 10.0, "three disk hits")
    assert len(origin.requests) == 1


@pytest.mark.parametrize("size", [100_000, 2 << 20])  # packed (sent with sendfile once verified); a file of its own
def test_disk_only_hits_revalidated_by_304_keep_their_body(stack, fragile, uid, tmp_path, size):
    """No memory tier: every hit is read from disk (a repeated one without the
    index, from the worker's known heads), and a 304 that freshens such a hit
    rewrites its record with the new head and the whole body."""
    body = bytes(range(256)) * (size // 256)
    path = fragile.script(
        f"/strict/{uid}",
        reply(body=body, headers=[cc("max-age=1"), ("ETag", '"e1"'), ("X-Version", "1")]),
        validating(body, etag='"e1"', headers_304=[cc("max-age=60"), ("ETag", '"e1"'), ("X-Version", "2")]),
    )
    config = cache_config(fragile.backend, disk_path=str(tmp_path / "disk"), workers=1)
    config["cache"]["memory_size"] = 0
    proxy = stack.proxy(config=config)
    with Session(proxy) as session:
        assert_stored_miss(session.get(path))
        for _ in range(3):
            assert_hit(session.get(path), body)
        time.sleep(PAST_ONE_SECOND)
        refreshed = session.get(path)
        assert refreshed.status == 200 and refreshed.body == body and refreshed.header("X-Version") == "2"
        assert cache_status(refreshed).fwd_status == 304
        for _ in range(3):
            hit = session.get(path)
            assert_hit(hit, body)
            assert hit.header("X-Version") == "2"
    assert fragile.count(path) == 2
