"""Tests for ``POST /api/v1/sign`` (:mod:`speedproxy.admin.api_sign`), in memory."""

from __future__ import annotations

from typing import Any, List

import pytest
from twisted.logger import globalLogPublisher

from speedproxy.admin.site import admin_site
from speedproxy.config import parse_config
from speedproxy.edge.signed_urls import signature

from test_admin_site import FakeControl, call

KEY = "first-key-0123456789abcdef"
CONFIG = f"""\
admin: {{api_key: the-admin-key-1}}
backends:
  default:
    - {{id: a, host: 10.0.0.1, port: 80}}
routing:
  default: {{path: /, upstream: default}}
  video: {{path: /hls/, upstream: default, signed_urls: {{secrets: ["{KEY}", "older-key-0123456789"]}}}}
  bound:
    path: /b/
    host: tv.example.com
    upstream: default
    signed_urls: {{secrets: ["{KEY}"], bind_client_ip: true, param_signature: s, param_expires: e}}
  loose: {{path: /loose/, upstream: default, signed_urls: {{secrets: ["{KEY}"], query: ignore}}}}
  tv:
    path: /tv/
    upstream: default
    cache: {{enabled: true}}
    hls: {{enabled: true}}
    sessions: {{}}
    signed_urls: {{secrets: ["{KEY}"]}}
"""
AUTH = {"X-API-Key": "the-admin-key-1"}


@pytest.fixture
def control() -> FakeControl:
    control = FakeControl(parse_config(CONFIG))
    control.reactor.advance(1_700_000_000)
    return control


@pytest.fixture
def site(control) -> Any:
    made = admin_site(control, environ={})
    made.timeOut = None
    return made


def test_sign_returns_a_url_signed_with_the_first_secret(site) -> None:
    answer = call(site, "POST", "/api/v1/sign", {"path": "/hls/a/../live/index.m3u8?q=1&sig=old", "ttl": "1h"}, AUTH)
    assert answer.status == 200, answer.body
    body = answer.json
    expires = 1_700_000_000 + 3600
    assert body["expires"] == expires and body["route"] == "video" and body["path"] == "/hls/live/index.m3u8"
    # The query given is kept and signed (the old signature parameter dropped).
    assert body["url"] == (
        f"/hls/live/index.m3u8?q=1&exp={expires}&sig={signature(KEY, '/hls/live/index.m3u8', expires, query='q=1')}"
    )
    assert body["expires_at"] == "2023-11-14T23:13:20Z"


def test_the_query_is_signed_in_canonical_form_unless_the_route_ignores_it(site) -> None:
    expires = 1_700_000_000 + 3600
    answer = call(site, "POST", "/api/v1/sign", {"path": "/hls/a.ts?quality=hd&lang=en%2dGB&exp=1"}, AUTH)
    assert answer.status == 200, answer.body
    covered = signature(KEY, "/hls/a.ts", expires, query="lang=en-GB&quality=hd")
    assert answer.json["url"] == f"/hls/a.ts?quality=hd&lang=en%2dGB&exp={expires}&sig={covered}"
    # On a route with query: ignore, the path alone (the query kept as it was given).
    answer = call(site, "POST", "/api/v1/sign", {"path": "/loose/a.ts?quality=hd"}, AUTH)
    assert answer.json["url"] == f"/loose/a.ts?quality=hd&exp={expires}&sig={signature(KEY, '/loose/a.ts', expires)}"
    # Parameters the route's signatures never cover (LL-HLS directives, the session one) are left out.
    answer = call(site, "POST", "/api/v1/sign", {"path": "/tv/i.m3u8?v=1&_HLS_msn=3&spx_session=x"}, AUTH)
    covered = signature(KEY, "/tv/i.m3u8", expires, query="v=1")
    assert answer.json["url"] == f"/tv/i.m3u8?v=1&_HLS_msn=3&spx_session=x&exp={expires}&sig={covered}"


def test_a_bound_route_needs_the_client_address_and_a_host_picks_the_route(site) -> None:
    missing = call(site, "POST", "/api/v1/sign", {"path": "/b/x", "host": "tv.example.com"}, AUTH)
    assert (missing.status, missing.json["field"]) == (400, "client_ip")
    answer = call(site, "POST", "/api/v1/sign", {"path": "/b/x", "host": "TV.example.com:8080", "client_ip": "192.0.2.9", "ttl": 60}, AUTH)
    assert answer.status == 200, answer.body
    expires = 1_700_000_060
    assert answer.json["url"] == f"/b/x?e={expires}&s={signature(KEY, '/b/x', expires, '192.0.2.9')}"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"path": "relative"}, "path"),
        ({"path": "/hls/x", "ttl": "forever"}, "ttl"),
        ({"path": "/hls/x", "ttl": "400d"}, "ttl"),
        ({"path": "/plain"}, "path"),  # the default route has no signed_urls
        ({"path": "/hls/x", "route": "nope"}, "route"),
        ({"path": "/hls/x", "extra": 1}, "extra"),
        ({"path": "/b/x", "host": "tv.example.com", "client_ip": "not-an-ip"}, "client_ip"),
        ({"path": "/hls/%00"}, "path"),
    ],
)
def test_a_wrong_body_is_a_400_naming_the_field(site, body, field) -> None:
    answer = call(site, "POST", "/api/v1/sign", body, AUTH)
    assert (answer.status, answer.json.get("field")) == (400, field), answer.body


def test_sign_needs_the_api_key_and_is_audited(site) -> None:
    lines: List[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "speedproxy.audit":
            lines.append(event["line"])

    globalLogPublisher.addObserver(observe)
    try:
        refused = call(site, "POST", "/api/v1/sign", {"path": "/hls/x"})
        assert refused.status == 401
        allowed = call(site, "POST", "/api/v1/sign", {"path": "/hls/x"}, AUTH)
        assert allowed.status == 200
    finally:
        globalLogPublisher.removeObserver(observe)
    assert "outcome=denied" in lines[0]
    assert "path=/api/v1/sign outcome=allowed" in lines[1] and 'note="path=/hls/x ttl=3600s route=video"' in lines[1]
    assert KEY not in "".join(lines)


def test_get_config_masks_literal_secrets_and_a_put_keeps_them(site, control) -> None:
    shown = call(site, "GET", "/api/v1/config", headers=AUTH).json["config"]
    assert shown["routing"]["video"]["signed_urls"]["secrets"] == ["********", "********"]
    shown["routing"]["video"]["signed_urls"]["secrets"] = ["a-brand-new-key-0123456789", "********"]
    put = call(site, "PUT", "/api/v1/config", {"config": shown}, AUTH)
    assert put.status == 200, put.body
    assert control.config.routing["video"].signed_urls.secrets == ("a-brand-new-key-0123456789", KEY)
