"""Rate limits, connection limits and sessions end to end: ``twistd speedproxy`` with 2 workers.

Every proxy here runs two worker processes, and the clients are spread over
both (each client its own connection, all connected at once: the accept
balancer splits them); the limits must hold for the host, not per worker.
Statuses, headers and bodies are read with raw sockets; sessions are made and
revoked through the admin API.  Waits are bounded polls.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

import pytest

from speedproxy.testing import RawClient, RawResponse, echo, read_request_head, wait_until

from workers_support import metrics, stats, wait_workers

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")

SERVER: Dict[str, Any] = {"workers": 2, "access_log": "off", "shutdown_grace": "5s"}


def _route(**keys: Any) -> Dict[str, Any]:
    """The ``default`` route with ``keys``, and ``/probe``, a route without any (see :func:`_connections`)."""
    return {
        "routing": {
            "default": {"path": "/", "upstream": "default", **keys},
            "probe": {"path": "/probe", "upstream": "default"},
        }
    }


def _served_by(proxy, before: Dict[int, int]) -> Optional[List[Optional[int]]]:
    """``[slot]`` of the one worker whose request count moved since ``before``;
    ``[None]`` when both moved (a request answered before ``before`` was taken
    was counted after it: which worker took the probe is unknown)."""
    now = {w["slot"]: w["requests"] for w in stats(proxy)["workers"]}
    moved = [slot for slot, count in now.items() if count != before.get(slot, 0)]
    if len(moved) > 1:
        return [None]
    return moved or None


def _connections(proxy, count: int) -> Dict[int, List[RawClient]]:
    """``count`` keep-alive connections, at least one on each of the two workers.

    Each is opened and asked for ``/probe`` (a route without limits) on its
    own, and ``/stats`` says which worker answered it; a connection stays with
    its worker.  When the accept balancer put every one on one worker (a very
    busy machine), more are opened, at most ``4 * count`` in all.
    """
    by_worker: Dict[int, List[RawClient]] = {0: [], 1: []}
    opened: List[RawClient] = []
    try:
        while len(opened) < 4 * count:
            if sum(map(len, by_worker.values())) == count and all(by_worker.values()):
                return by_worker
            before = {w["slot"]: w["requests"] for w in stats(proxy)["workers"]}
            client = RawClient(*proxy.address, timeout=10.0)
            opened.append(client)
            client.request("GET", "/probe")
            assert client.read_response().status == 200
            (slot,) = wait_until(lambda: _served_by(proxy, before), 5.0, "the probe counted in /stats")
            if slot is None:
                continue  # not kept: closed below, another one is opened
            if sum(map(len, by_worker.values())) == count - 1 and not by_worker[1 - slot]:
                continue  # the last place is kept for the other worker
            by_worker[slot].append(client)
        raise AssertionError(f"{len(opened)} connections did not reach both workers: {by_worker}")
    finally:
        kept = {id(client) for clients in by_worker.values() for client in clients}
        for client in opened:
            if id(client) not in kept or not (sum(map(len, by_worker.values())) == count and all(by_worker.values())):
                client.close()


def _spread(proxy, count: int, path: str = "/x", headers=()) -> Tuple[List[RawResponse], Dict[int, int]]:
    """One GET each on ``count`` connections spread over both workers: the answers, and requests per worker."""
    by_worker = _connections(proxy, count)
    clients = [client for slot in sorted(by_worker) for client in by_worker[slot]]
    try:
        for client in clients:
            client.request("GET", path, headers=headers)
        answers = [client.read_response() for client in clients]
    finally:
        for client in clients:
            client.close()
    return answers, {slot: len(found) for slot, found in by_worker.items()}


def _admin(proxy, method: str, path: str, body: Any = None) -> Tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{proxy.admin_port}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5.0) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _refused(proxy, reason: str) -> float:
    samples = metrics(proxy).get("speedproxy_refused", [])
    return sum(value for name, labels, value in samples if labels.get("reason") == reason and name.endswith("_total"))


# -- rate limit ------------------------------------------------------------------------


def test_forty_requests_over_two_workers_get_exactly_the_burst_through(stack) -> None:
    origin = stack.backend(name="origin")
    proxy = stack.proxy(
        origin, config=_route(rate_limit={"requests": 1, "per": "1h", "burst": 10}), **SERVER
    )
    wait_workers(proxy, 2)
    answers, per_worker = _spread(proxy, 40)
    statuses = [answer.status for answer in answers]
    assert statuses.count(200) == 10 and statuses.count(429) == 30, statuses
    assert all(count > 0 for count in per_worker.values()), f"not spread over both workers: {per_worker}"
    assert len([r for r in origin.requests if r.path == "/x"]) == 10  # refusals never reached the backend
    refusal = next(answer for answer in answers if answer.status == 429)
    body = refusal.json()
    assert body["error"] == "rate_limited" and body["request_id"] == refusal.header("X-Request-Id")
    assert refusal.header("Content-Type") == "application/json"
    retry = int(refusal.header("Retry-After"))
    assert 3000 < retry <= 3600  # one token per hour
    assert refusal.header("RateLimit-Policy") == '"default";q=1;w=3600;spx-burst=10'
    assert refusal.header("RateLimit") == f'"default";r=0;t={retry}'
    assert wait_until(lambda: _refused(proxy, "rate_limit") == 30 or None, 5.0, "30 refusals counted")


def test_the_bucket_refills_and_keys_by_header(stack) -> None:
    origin = stack.backend(name="origin")
    limit = {"requests": 5, "per": "1s", "burst": 5, "key": "header:X-API-Key"}
    proxy = stack.proxy(origin, config=_route(rate_limit=limit), **SERVER)
    wait_workers(proxy, 2)
    answers, _ = _spread(proxy, 8, headers=[("X-API-Key", "alice")])
    assert [a.status for a in answers].count(200) == 5
    # Another key has its own bucket.
    answers, _ = _spread(proxy, 5, headers=[("X-API-Key", "bob")])
    assert all(a.status == 200 for a in answers)

    # Alice's bucket refills at 5/s: within ~1 s she gets through again.
    def alice_through() -> Optional[bool]:
        with RawClient(*proxy.address, timeout=5.0) as client:
            client.request("GET", "/x", headers=[("X-API-Key", "alice")])
            return True if client.read_response().status == 200 else None

    wait_until(alice_through, 2.0, "alice's bucket refilled")


def test_a_route_without_limits_is_not_limited(stack) -> None:
    origin = stack.backend(name="origin")
    config = _route(rate_limit={"requests": 1, "per": "1h"})
    config["routing"]["open"] = {"path": "/open", "upstream": "default"}
    proxy = stack.proxy(origin, config=config, **SERVER)
    wait_workers(proxy, 2)
    answers, _ = _spread(proxy, 20, path="/open/x")
    assert all(a.status == 200 for a in answers)


# -- connection limit ---------------------------------------------------------------------


def test_requests_in_flight_per_client_are_limited_across_workers(stack) -> None:
    release = threading.Event()
    arrived = threading.Semaphore(0)

    def slow(request):
        arrived.release()
        release.wait(10.0)
        return echo()(request)

    origin = stack.backend(name="origin")
    origin.route("/slow", slow)
    proxy = stack.proxy(origin, config=_route(connection_limit={"per_client": 3}), **SERVER)
    wait_workers(proxy, 2)
    held = [RawClient(*proxy.address, timeout=10.0) for _ in range(3)]
    try:
        for client in held:
            client.request("GET", "/slow")
        for _ in range(3):
            assert arrived.acquire(timeout=5.0), "the slow requests did not reach the backend"
        # Three in flight: every further request (on either worker) is refused at once.
        answers, per_worker = _spread(proxy, 12)
        assert all(a.status == 503 for a in answers), [a.status for a in answers]
        assert all(count > 0 for count in per_worker.values()), per_worker
        assert answers[0].json()["error"] == "too_many_connections"
    finally:
        release.set()
    for client in held:
        assert client.read_response().status == 200
        client.close()
    # Done: the counts went back down on both workers.
    answers, _ = _spread(proxy, 3)
    assert all(a.status == 200 for a in answers)
    assert wait_until(lambda: _refused(proxy, "connection_limit") == 12 or None, 5.0, "12 refusals counted")


def _tunnel_backend(sock, stopping) -> None:
    """Answers an Upgrade with 101 and echoes until the client closes; plain GETs get 200."""
    head = read_request_head(sock)
    if b"upgrade: websocket" not in head.lower():
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    while not stopping.is_set():
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)


def test_a_websocket_counts_until_it_closes(stack) -> None:
    backend = stack.raw_backend(_tunnel_backend, name="tunnel")
    config = _route(connection_limit={"per_client": 1}, protocols={"websocket": "round_robin"})
    proxy = stack.proxy(backend, config=config, **SERVER)
    wait_workers(proxy, 2)
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
               ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]
    tunnel = RawClient(*proxy.address, timeout=5.0)
    tunnel.request("GET", "/ws", headers=upgrade)
    assert tunnel.read_head().status == 101
    tunnel.send(b"ping")
    assert tunnel.sock.recv(4) == b"ping"
    answers, _ = _spread(proxy, 4)
    assert all(a.status == 503 for a in answers), [a.status for a in answers]
    tunnel.close()

    def released() -> Optional[bool]:
        with RawClient(*proxy.address, timeout=5.0) as client:
            client.request("GET", "/after")
            return True if client.read_response().status == 200 else None

    wait_until(released, 5.0, "the closed tunnel no longer counted")


# -- sessions ---------------------------------------------------------------------------------


def test_sessions_from_the_admin_api_are_required_and_revoked_on_both_workers(stack) -> None:
    origin = stack.backend(name="origin")
    sessions = {"required": True, "cookie": "spx_session", "ttl": "1h", "max_per_client": 2}
    proxy = stack.proxy(origin, config=_route(sessions=sessions), **SERVER)
    wait_workers(proxy, 2)

    answers, _ = _spread(proxy, 4)
    assert all(a.status == 403 and a.json()["error"] == "session_required" for a in answers)

    status, session = _admin(proxy, "POST", "/api/v1/sessions", {"client": "127.0.0.1"})
    assert status == 201, session
    assert session["client"] == "127.0.0.1" and session["route"] == "default"
    assert session["expires"] - session["created"] == pytest.approx(3600)
    cookie = [("Cookie", f"spx_session={session['id']}")]
    answers, per_worker = _spread(proxy, 10, headers=cookie)
    assert all(a.status == 200 for a in answers), [a.status for a in answers]
    assert all(count > 0 for count in per_worker.values()), per_worker
    answers, _ = _spread(proxy, 4, path=f"/q?a=1&spx_session={session['id']}")  # the query form
    assert all(a.status == 200 for a in answers)
    assert [r.path for r in origin.requests if r.path.startswith("/q")] == ["/q?a=1"] * 4  # taken off the URL

    # max_per_client: 2 live sessions for 127.0.0.1, a third is refused.
    status, second = _admin(proxy, "POST", "/api/v1/sessions", {"client": "127.0.0.1"})
    assert status == 201
    status, third = _admin(proxy, "POST", "/api/v1/sessions", {"client": "127.0.0.1"})
    assert status == 429 and third["error"] == "too_many_sessions", third
    status, listed = _admin(proxy, "GET", "/api/v1/sessions?client=127.0.0.1")
    assert sorted(s["id"] for s in listed["sessions"]) == sorted([session["id"], second["id"]])

    # Revoked: refused on both workers within one second.
    status, answer = _admin(proxy, "DELETE", f"/api/v1/sessions/{session['id']}")
    assert (status, answer["revoked"]) == (200, True)
    revoked_at = time.monotonic()
    answers, per_worker = _spread(proxy, 10, headers=cookie)
    assert time.monotonic() - revoked_at < 1.0
    assert all(a.status == 403 and a.json()["error"] == "session_revoked" for a in answers)
    assert all(count > 0 for count in per_worker.values()), per_worker
    assert _admin(proxy, "DELETE", f"/api/v1/sessions/{session['id']}")[0] == 404
    # The revoked one no longer counts: a new session may start.
    assert _admin(proxy, "POST", "/api/v1/sessions", {"client": "127.0.0.1"})[0] == 201
    assert wait_until(lambda: _refused(proxy, "session") == 14 or None, 5.0, "14 refusals counted")


def test_a_signed_url_starts_a_session(stack) -> None:
    from speedproxy.config.model import SignedUrlsConfig
    from speedproxy.edge.signed_urls import signed_query

    secret = "k" * 32
    origin = stack.backend(name="origin")
    keys = {
        "signed_urls": {"secrets": [secret]},
        "sessions": {"required": True, "ttl": "10m", "max_per_client": 1},
    }
    proxy = stack.proxy(origin, config=_route(**keys), **SERVER)
    wait_workers(proxy, 2)
    query = signed_query(SignedUrlsConfig(secrets=(secret,)), "/live/a.m3u8", int(time.time()) + 600)
    with RawClient(*proxy.address, timeout=5.0) as client:
        client.request("GET", "/live/a.m3u8?" + query)
        first = client.read_response()
    assert first.status == 200, first.body
    session_id = first.header("X-Speedproxy-Session")
    assert session_id and f"spx_session={session_id}; Path=/; Max-Age=600; HttpOnly" in first.header("Set-Cookie")
    # The session lets the signed URL's client in on both workers...
    answers, _ = _spread(proxy, 6, path="/live/a.m3u8?" + query, headers=[("Cookie", f"spx_session={session_id}")])
    assert all(a.status == 200 and a.header("Set-Cookie") is None for a in answers)
    # A player sending no cookie gets the same session back for the same signed link, on both workers...
    answers, _ = _spread(proxy, 6, path="/live/a.m3u8?" + query)
    assert all(a.status == 200 and a.header("X-Speedproxy-Session") == session_id for a in answers), [
        (a.status, a.header("X-Speedproxy-Session")) for a in answers
    ]
    # ...while another signed link without it would be a second session: over max_per_client.
    other = signed_query(SignedUrlsConfig(secrets=(secret,)), "/live/a.m3u8", int(time.time()) + 900)
    with RawClient(*proxy.address, timeout=5.0) as client:
        client.request("GET", "/live/a.m3u8?" + other)
        second = client.read_response()
    assert second.status == 429 and second.json()["error"] == "too_many_sessions"


def test_a_session_opens_the_routes_of_its_realm_only(stack) -> None:
    origin = stack.backend(name="origin")
    config = {
        "routing": {
            "default": {"path": "/", "upstream": "default", "sessions": {"ttl": "1h"}},
            "premium": {"path": "/p/", "upstream": "default", "sessions": {"ttl": "1h"}},
            "extras": {"path": "/x/", "upstream": "default", "sessions": {"ttl": "1h", "realm": "default"}},
            "probe": {"path": "/probe", "upstream": "default"},
        }
    }
    proxy = stack.proxy(origin, config=config, **SERVER)
    wait_workers(proxy, 2)
    status, session = _admin(proxy, "POST", "/api/v1/sessions", {"client": "127.0.0.1", "route": "default"})
    assert status == 201 and session["realm"] == "default", session
    cookie = [("Cookie", f"spx_session={session['id']}")]
    answers, per_worker = _spread(proxy, 4, path="/a", headers=cookie)
    assert all(a.status == 200 for a in answers), [a.status for a in answers]
    answers, _ = _spread(proxy, 4, path="/x/a", headers=cookie)  # realm: default
    assert all(a.status == 200 for a in answers), [a.status for a in answers]
    answers, _ = _spread(proxy, 4, path="/p/a", headers=cookie)  # another realm
    assert all(a.status == 403 and a.json()["error"] == "session_unknown" for a in answers)
    status, gold = _admin(proxy, "POST", "/api/v1/sessions", {"client": "127.0.0.1", "realm": "premium"})
    assert status == 201 and gold["route"] == "premium"
    answers, _ = _spread(proxy, 2, path="/p/a", headers=[("Cookie", f"spx_session={gold['id']}")])
    assert all(a.status == 200 for a in answers)


def test_check_reports_bad_limit_keys_with_file_and_line(tmp_path) -> None:
    from speedproxy.testing import check_config

    path = tmp_path / "bad.yaml"
    path.write_text(
        "routing:\n"
        "  default:\n"
        "    rate_limit: {requests: 0, per: 1s, key: cookie}\n"
        "    connection_limit: {per_client: 32, status: 404}\n"
        "    sessions:\n"
        "      ttl: forever\n"
    )
    result = check_config(path)
    assert result.returncode == 1
    out = result.stdout + (result.stderr or "")
    assert f"{path}:3: routing.default.rate_limit.requests: must be between 1 and" in out
    assert f"{path}:3: routing.default.rate_limit.key: expected client_ip, session or header:<Name>" in out
    assert f"{path}:4: routing.default.connection_limit.status: expected 429 or 503, got 404" in out
    assert f"{path}:6: routing.default.sessions.ttl:" in out


def test_one_process_serving_alone_shares_its_sessions_with_its_admin_api(stack) -> None:
    origin = stack.backend(name="origin")
    config = _route(sessions={"ttl": "1h"}, rate_limit={"requests": 3, "per": "1h", "key": "session"})
    proxy = stack.proxy(origin, config=config, workers=0, access_log="off")
    status, session = _admin(proxy, "POST", "/api/v1/sessions", {"client": "127.0.0.1"})
    assert status == 201, session
    statuses = []
    for _ in range(5):
        with RawClient(*proxy.address, timeout=5.0) as client:
            client.request("GET", "/x", headers=[("Cookie", f"spx_session={session['id']}")])
            statuses.append(client.read_response().status)
    assert statuses == [200, 200, 200, 429, 429]  # the session's own bucket
    assert _admin(proxy, "DELETE", f"/api/v1/sessions/{session['id']}")[0] == 200
    with RawClient(*proxy.address, timeout=5.0) as client:
        client.request("GET", "/x", headers=[("Cookie", f"spx_session={session['id']}")])
        assert client.read_response().json()["error"] == "session_revoked"
