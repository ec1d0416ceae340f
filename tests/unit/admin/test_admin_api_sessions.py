"""Tests for ``/api/v1/sessions`` (:mod:`speedproxy.admin.api_sessions`), in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from speedproxy.admin.api_sessions import store_of
from speedproxy.admin.site import admin_site
from speedproxy.config import parse_config
from speedproxy.edge.host_state import HostEdgeState
from speedproxy.edge.host_table import EdgeTable, edge_state_path
from speedproxy.edge.state import SessionStatus

from test_admin_site import FakeControl, call

CONFIG = """\
admin: {api_key: the-admin-key-1}
backends:
  default:
    - {id: a, host: 10.0.0.1, port: 80}
routing:
  default: {path: /, upstream: default}
  video: {path: /hls/, upstream: default, sessions: {ttl: 1h, max_per_client: 2, cookie: tv}}
"""
AUTH = {"X-API-Key": "the-admin-key-1"}


class Wall:
    now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def control() -> FakeControl:
    control = FakeControl(parse_config(CONFIG))
    control.wall = Wall()
    control.edge_state = HostEdgeState(EdgeTable(None), wall=control.wall)
    return control


@pytest.fixture
def site(control) -> Any:
    made = admin_site(control, environ={})
    made.timeOut = None
    return made


def test_open_use_list_and_revoke(site, control) -> None:
    answer = call(site, "POST", "/api/v1/sessions", {"client": "203.0.113.7"}, AUTH)
    assert answer.status == 201, answer.body
    session = answer.json
    assert session["route"] == "video" and session["client"] == "203.0.113.7"
    assert (session["created"], session["expires"]) == (control.wall.now, control.wall.now + 3600)
    assert session["cookie"] == f"tv={session['id']}; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"
    assert session["query"] == f"tv={session['id']}"
    assert control.edge_state.check_session(session["id"]) is SessionStatus.VALID
    assert call(site, "GET", f"/api/v1/sessions/{session['id']}", headers=AUTH).json["status"] == "valid"

    listed = call(site, "GET", "/api/v1/sessions", headers=AUTH).json["sessions"]
    assert [row["id"] for row in listed] == [session["id"]]
    assert call(site, "GET", "/api/v1/sessions?client=203.0.113.8", headers=AUTH).json == {"sessions": []}

    revoked = call(site, "DELETE", f"/api/v1/sessions/{session['id']}", headers=AUTH)
    assert (revoked.status, revoked.json) == (200, {"id": session["id"], "revoked": True})
    assert control.edge_state.check_session(session["id"]) is SessionStatus.REVOKED
    assert call(site, "GET", f"/api/v1/sessions/{session['id']}", headers=AUTH).json["status"] == "revoked"
    again = call(site, "DELETE", f"/api/v1/sessions/{session['id']}", headers=AUTH)
    assert (again.status, again.json["error"]) == (404, "not_found")


def test_max_per_client_is_429(site) -> None:
    for _ in range(2):
        assert call(site, "POST", "/api/v1/sessions", {"client": "2001:db8::1", "route": "video"}, AUTH).status == 201
    answer = call(site, "POST", "/api/v1/sessions", {"client": "2001:db8::1"}, AUTH)
    assert (answer.status, answer.json["error"], answer.json["field"]) == (429, "too_many_sessions", "client")


def test_a_shorter_ttl_may_be_asked(site, control) -> None:
    answer = call(site, "POST", "/api/v1/sessions", {"client": "203.0.113.7", "ttl": "5m"}, AUTH)
    assert answer.json["expires"] - answer.json["created"] == 300


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "client"),
        ({"client": 7}, "client"),
        ({"client": "not-an-ip"}, "client"),
        ({"client": "203.0.113.7", "route": "default"}, "route"),
        ({"client": "203.0.113.7", "route": "nope"}, "route"),
        ({"client": "203.0.113.7", "ttl": "2h"}, "ttl"),
        ({"client": "203.0.113.7", "ttl": "soon"}, "ttl"),
        ({"client": "203.0.113.7", "user": "x"}, "user"),
    ],
)
def test_a_wrong_body_names_the_field(site, control, body, field) -> None:
    answer = call(site, "POST", "/api/v1/sessions", body, AUTH)
    assert (answer.status, answer.json["field"]) == (400, field), answer.body
    assert control.edge_state.list_sessions(None) == []


def test_the_route_must_be_named_when_several_have_sessions() -> None:
    text = CONFIG + "  radio: {path: /radio/, upstream: default, sessions: {}}\n"
    control = FakeControl(parse_config(text))
    control.edge_state = HostEdgeState(EdgeTable(None))
    site = admin_site(control, environ={})
    answer = call(site, "POST", "/api/v1/sessions", {"client": "203.0.113.7"}, AUTH)
    assert answer.status == 400 and "radio, video" in answer.json["detail"]
    assert call(site, "POST", "/api/v1/sessions", {"client": "203.0.113.7", "route": "radio"}, AUTH).status == 201


def test_the_key_is_needed(site) -> None:
    assert call(site, "POST", "/api/v1/sessions", {"client": "203.0.113.7"}).status == 401
    assert call(site, "DELETE", "/api/v1/sessions/x").status == 401


def test_the_master_opens_the_workers_file(tmp_path: Path) -> None:
    class Segment:
        path = str(tmp_path / "stats")

    class Master:
        segment = Segment()

    master = Master()
    store = store_of(master)
    assert store is store_of(master)  # opened once
    worker_side = HostEdgeState(EdgeTable(edge_state_path(Segment.path)))
    session = store.open_session("192.0.2.1", 60.0, 1)
    assert worker_side.check_session(session.id) is SessionStatus.VALID


def test_a_session_opens_its_route_s_realm_only() -> None:
    text = CONFIG + (
        "  extras: {path: /extras/, upstream: default, sessions: {realm: video}}\n"
        "  premium: {path: /p/, upstream: default, sessions: {realm: gold}}\n"
    )
    control = FakeControl(parse_config(text))
    control.edge_state = store = HostEdgeState(EdgeTable(None))
    site = admin_site(control, environ={})
    by_route = call(site, "POST", "/api/v1/sessions", {"client": "203.0.113.7", "route": "video"}, AUTH).json
    assert by_route["realm"] == "video"
    assert store.check_session(by_route["id"], "video") is SessionStatus.VALID
    assert store.check_session(by_route["id"], "gold") is SessionStatus.UNKNOWN
    by_realm = call(site, "POST", "/api/v1/sessions", {"client": "203.0.113.7", "realm": "gold"}, AUTH)
    assert by_realm.status == 201 and by_realm.json["route"] == "premium" and by_realm.json["realm"] == "gold"
    assert store.check_session(by_realm.json["id"], "gold") is SessionStatus.VALID
    assert store.check_session(by_realm.json["id"], "video") is SessionStatus.UNKNOWN
    unknown = call(site, "POST", "/api/v1/sessions", {"client": "203.0.113.7", "realm": "silver"}, AUTH)
    assert (unknown.status, unknown.json["field"]) == (400, "realm") and "gold, video" in unknown.json["detail"]


def test_a_full_session_store_is_503(site, control) -> None:
    from speedproxy.edge.state import SessionStoreFull

    def full(*args: Any) -> Any:
        raise SessionStoreFull("203.0.113.7")

    control.edge_state.open_session = full
    answer = call(site, "POST", "/api/v1/sessions", {"client": "203.0.113.7"}, AUTH)
    assert (answer.status, answer.json["error"]) == (503, "session_store_full")
