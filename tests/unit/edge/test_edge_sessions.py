"""Tests for :mod:`speedproxy.edge.sessions`."""

from __future__ import annotations

import json
from typing import List

from twisted.internet.defer import fail, succeed
from twisted.logger import globalLogPublisher

from speedproxy.config.model import SessionsConfig
from speedproxy.edge.host_state import HostEdgeState
from speedproxy.edge.host_table import EdgeTable
from speedproxy.edge.sessions import SessionsFilter, find_token, mark_signed
from speedproxy.edge.state import SessionLimitReached, SessionStatus
from speedproxy.filters.messages import FilterResponse, LocalResponse
from speedproxy.proxy.http1 import parse_response_head

from edge_limits_support import Clock, filter_request


def _setup(config: SessionsConfig = SessionsConfig(ttl=600.0, max_per_client=2)):
    wall = Clock(1.7e9)
    state = HostEdgeState(EdgeTable(None), wall=wall)
    counted: List[str] = []
    return SessionsFilter("video", config, state, counted.append), state, wall, counted


def _error(answer: LocalResponse) -> str:
    return json.loads(answer.body)["error"]


def test_find_token_in_cookie_or_query() -> None:
    assert find_token(filter_request(headers="Cookie: a=1; spx_session=abc; b=2"), "spx_session") == "abc"
    assert find_token(filter_request(headers='Cookie: spx_session="q"'), "spx_session") == "q"
    split = filter_request(headers="Cookie: a=1\r\nCookie: spx_session=second")  # as HTTP/2 may send them
    assert find_token(split, "spx_session") == "second"
    request = filter_request("/x?a=1&spx_session=tok&b=2")
    assert find_token(request, "spx_session") == "tok"
    raw = request._exchange.request
    assert (raw.query, raw.target) == (b"?a=1&b=2", b"/x?a=1&b=2")  # taken off the URL
    both = filter_request("/x?spx_session=q", "Cookie: spx_session=c")
    assert find_token(both, "spx_session") == "c" and both._exchange.request.target == b"/x"
    assert find_token(filter_request("/x?my_spx_session=tok", "Cookie: xspx_session=1"), "spx_session") is None
    assert find_token(filter_request("/x?spx_session="), "spx_session") is None


def test_required_session_refused_with_reason_then_accepted() -> None:
    sessions, state, wall, counted = _setup()
    answer = sessions.request(filter_request())
    assert answer.status == 403 and _error(answer) == "session_required"
    answer = sessions.request(filter_request(headers="Cookie: spx_session=AAAAAAAAAAAAAAAAAAAAAA"))
    assert _error(answer) == "session_unknown"
    session = state.open_session("192.0.2.7", 600.0, 2, "video")
    request = filter_request(headers=f"Cookie: spx_session={session.id}")
    assert sessions.request(request) is None
    assert request.state["edge.session"] == session.id
    state.revoke_session(session.id)
    assert _error(sessions.request(filter_request(f"/a?spx_session={session.id}"))) == "session_revoked"
    other = state.open_session("192.0.2.7", 600.0, 2, "video")
    wall.now += 601
    assert _error(sessions.request(filter_request(f"/a?spx_session={other.id}"))) == "session_expired"
    assert counted == ["session"] * 4


def test_optional_sessions_let_requests_without_one_through() -> None:
    sessions, _, _, counted = _setup(SessionsConfig(required=False))
    assert sessions.request(filter_request()) is None
    assert sessions.request(filter_request("/a?spx_session=bogus")) is None
    assert counted == []


def test_a_signed_request_opens_a_session_and_hands_it_out() -> None:
    sessions, state, _, _ = _setup()
    request = filter_request()
    mark_signed(request)
    assert sessions.request(request) is None
    new = request.state["edge.session"]
    assert state.check_session(new) is SessionStatus.VALID
    head = parse_response_head(b"HTTP/1.1 200 OK\r\nSet-Cookie: app=1\r\nContent-Length: 0")
    sessions.response_head(request, FilterResponse(head))
    cookies = [value for name, value in head.headers if name == b"Set-Cookie"]
    assert cookies == [b"app=1", f"spx_session={new}; Path=/; Max-Age=600; HttpOnly; SameSite=Lax".encode()]
    assert (b"X-Speedproxy-Session", new.encode()) in head.headers
    # A cache hit (a local answer) gets it too; a refusal does not.
    hit = LocalResponse(200, [("Content-Type", "text/plain")], b"x")
    sessions.local_response(request, hit)
    assert (b"X-Speedproxy-Session", new.encode()) in hit.headers
    refused = LocalResponse(429)
    sessions.local_response(request, refused)
    assert refused.headers == []
    # A signed request that brings its live session opens no other one.
    again = filter_request(headers=f"Cookie: spx_session={new}")
    mark_signed(again)
    assert sessions.request(again) is None and "edge.new_session" not in again.state
    assert len(state.list_sessions("192.0.2.7")) == 1


def test_a_signed_request_over_max_per_client_is_429() -> None:
    sessions, state, _, counted = _setup()
    for _ in range(2):
        state.open_session("192.0.2.7", 600.0, 2, "video")
    request = filter_request()
    mark_signed(request)
    answer = sessions.request(request)
    assert answer.status == 429 and _error(answer) == "too_many_sessions"
    assert counted == ["session"]


def test_requests_without_a_new_session_get_no_cookie() -> None:
    sessions, state, _, _ = _setup()
    session = state.open_session("192.0.2.7", 600.0, 2, "video")
    request = filter_request(headers=f"Cookie: spx_session={session.id}")
    sessions.request(request)
    head = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 0")
    sessions.response_head(request, FilterResponse(head))
    assert head.headers == [(b"Content-Length", b"0")]


class _Later:
    def __init__(self, check=None, opened=None) -> None:
        self.check, self.opened = check, opened

    def check_session(self, session_id, realm=None, client=None):
        return self.check

    def open_session(self, client, ttl, limit, realm="", reuse=b""):
        return self.opened


def test_deferred_store_answers() -> None:
    config = SessionsConfig()
    results: list = []
    SessionsFilter("v", config, _Later(check=succeed(SessionStatus.REVOKED))).request(
        filter_request("/a?spx_session=x")
    ).addCallback(results.append)
    assert _error(results[0]) == "session_revoked"
    request = filter_request()
    mark_signed(request)
    results = []
    SessionsFilter("v", config, _Later(opened=fail(SessionLimitReached("192.0.2.7", 3)))).request(
        request
    ).addCallback(results.append)
    assert _error(results[0]) == "too_many_sessions"
    # A store that fails lets the request through (logged), never a 500.
    results = []
    logged: list = []
    globalLogPublisher.addObserver(logged.append)
    try:
        SessionsFilter("v", config, _Later(check=fail(ConnectionError("away")))).request(
            filter_request("/a?spx_session=x")
        ).addCallbacks(results.append, results.append)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert results == [None]
    assert any("session store failed" in event.get("log_format", "") for event in logged)


def test_a_session_opens_the_routes_of_its_realm_only() -> None:
    sessions, state, _, _ = _setup()  # route "video": realm "video"
    premium = SessionsFilter("premium", SessionsConfig(), state)
    shared = SessionsFilter("extras", SessionsConfig(realm="video"), state)
    session = state.open_session("192.0.2.7", 600.0, 2, "video")
    cookie = f"Cookie: spx_session={session.id}"
    assert sessions.request(filter_request(headers=cookie)) is None
    assert shared.request(filter_request(headers=cookie)) is None
    assert _error(premium.request(filter_request(headers=cookie))) == "session_unknown"
    # Opened by a signed request on video: the same.
    request = filter_request()
    mark_signed(request)
    sessions.request(request)
    opened = request.state["edge.session"]
    assert _error(premium.request(filter_request(headers=f"Cookie: spx_session={opened}"))) == "session_unknown"


def test_bind_client_ip_refuses_the_session_from_another_address() -> None:
    _, state, _, _ = _setup()
    bound = SessionsFilter("video", SessionsConfig(bind_client_ip=True), state)
    loose = SessionsFilter("video", SessionsConfig(), state)
    session = state.open_session("192.0.2.7", 600.0, 2, "video")
    cookie = f"Cookie: spx_session={session.id}"
    assert bound.request(filter_request(headers=cookie)) is None  # filter_request comes from 192.0.2.7
    elsewhere = filter_request(headers=cookie)
    elsewhere._exchange.client_ip = "198.51.100.9"
    assert _error(bound.request(elsewhere)) == "session_unknown"
    elsewhere = filter_request(headers=cookie)
    elsewhere._exchange.client_ip = "198.51.100.9"
    assert loose.request(elsewhere) is None


def test_a_cookieless_player_gets_its_session_back_for_one_signed_link() -> None:
    sessions, state, _, counted = _setup()  # max_per_client 2
    ids = []
    for _ in range(5):
        request = filter_request()
        request.state["edge.signed"] = (1700000600, None)  # as the signed-URL filter leaves it
        assert sessions.request(request) is None
        ids.append(request.state["edge.session"])
    assert len(set(ids)) == 1 and counted == []
    other = filter_request()
    other.state["edge.signed"] = (1700009999, None)  # another link: another session
    assert sessions.request(other) is None and other.state["edge.session"] != ids[0]


def test_a_full_store_is_logged_once_an_interval_and_lets_the_request_through() -> None:
    from speedproxy.edge.state import SessionStoreFull

    class Full:
        def check_session(self, session_id, realm=None, client=None):
            return SessionStatus.UNKNOWN

        def open_session(self, client, ttl, limit, realm="", reuse=b""):
            raise SessionStoreFull(client)

    now = [0.0]
    sessions = SessionsFilter("v", SessionsConfig(), Full(), clock=lambda: now[0])
    logged: list = []
    globalLogPublisher.addObserver(logged.append)
    try:
        for _ in range(50):
            request = filter_request()
            mark_signed(request)
            assert sessions.request(request) is None
        now[0] += 61
        request = filter_request()
        mark_signed(request)
        sessions.request(request)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    mine = [event for event in logged if event.get("route") == "v"]
    assert len(mine) == 2
    assert not any(event.get("log_failure") for event in mine)
