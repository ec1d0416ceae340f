"""Tests for :mod:`speedproxy.edge.rate_limit`."""

from __future__ import annotations

import json
from typing import List

from twisted.internet.defer import Deferred, fail, succeed

from speedproxy.config.model import RateLimitConfig
from speedproxy.edge.host_state import HostEdgeState
from speedproxy.edge.host_table import EdgeTable
from speedproxy.edge.rate_limit import RateLimitFilter, policy_field
from speedproxy.edge.state import Take
from speedproxy.filters.messages import LocalResponse

from edge_limits_support import Clock, filter_request


def _filter(config: RateLimitConfig, clock: Clock, counted: List[str]) -> RateLimitFilter:
    return RateLimitFilter("video", config, HostEdgeState(EdgeTable(None), monotonic=clock), counted.append)


def _headers(answer: LocalResponse) -> dict:
    return {name.decode(): value.decode() for name, value in answer.headers}


def test_burst_then_429_with_draft_headers_and_json_body() -> None:
    counted: List[str] = []
    clock = Clock()
    limit = _filter(RateLimitConfig(requests=20, per=1.0, burst=40), clock, counted)
    assert all(limit.request(filter_request()) is None for _ in range(40))
    answer = limit.request(filter_request())
    assert isinstance(answer, LocalResponse) and answer.status == 429
    headers = _headers(answer)
    assert headers["Retry-After"] == "1"
    assert headers["RateLimit-Policy"] == '"video";q=20;w=1;spx-burst=40'
    assert headers["RateLimit"] == '"video";r=0;t=1'
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    body = json.loads(answer.body)
    assert body["error"] == "rate_limited" and body["request_id"] == "rid-1"
    assert counted == ["rate_limit"]
    clock.now += 0.05  # one token at 20/s
    assert limit.request(filter_request()) is None
    assert isinstance(limit.request(filter_request()), LocalResponse)


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    limit = _filter(RateLimitConfig(requests=1, per=90.0), Clock(), [])
    assert limit.request(filter_request()) is None
    answer = limit.request(filter_request())
    assert _headers(answer)["Retry-After"] == "90"
    assert _headers(answer)["RateLimit-Policy"] == '"video";q=1;w=90;spx-burst=1'


def test_keys_client_ip_header_and_session() -> None:
    by_ip = _filter(RateLimitConfig(requests=1, per=60.0), Clock(), [])
    assert by_ip.request(filter_request(client_ip="192.0.2.1")) is None
    assert by_ip.request(filter_request(client_ip="192.0.2.2")) is None
    assert by_ip.request(filter_request(client_ip="192.0.2.1")) is not None

    by_key = _filter(RateLimitConfig(requests=1, per=60.0, key="header:X-API-Key"), Clock(), [])
    assert by_key.request(filter_request(headers="X-API-Key: a", client_ip="192.0.2.1")) is None
    assert by_key.request(filter_request(headers="X-API-Key: b", client_ip="192.0.2.1")) is None
    assert by_key.request(filter_request(headers="X-API-Key: a", client_ip="192.0.2.9")) is not None
    # Without the header: the client's address, not one bucket for every keyless client.
    assert by_key.request(filter_request(client_ip="192.0.2.1")) is None
    assert by_key.request(filter_request(client_ip="192.0.2.2")) is None

    long_a, long_b = "a" * 5000, "a" * 4999 + "b"
    keys = {by_key.bucket(filter_request(headers=f"X-API-Key: {v}")) for v in (long_a, long_b)}
    assert len(keys) == 2 and all(len(key) < 64 for key in keys)  # long values are hashed

    by_session = _filter(RateLimitConfig(requests=1, per=60.0, key="session"), Clock(), [])
    one, two = filter_request(), filter_request()
    one.state["edge.session"] = "s1"
    two.state["edge.session"] = "s2"
    assert by_session.request(one) is None and by_session.request(two) is None
    again = filter_request()
    again.state["edge.session"] = "s1"
    assert by_session.request(again) is not None


def test_routes_have_separate_buckets() -> None:
    state = HostEdgeState(EdgeTable(None), monotonic=Clock())
    config = RateLimitConfig(requests=1, per=60.0)
    assert RateLimitFilter("a", config, state).request(filter_request()) is None
    assert RateLimitFilter("b", config, state).request(filter_request()) is None
    assert RateLimitFilter("a", config, state).request(filter_request()) is not None


class _Later:
    """A store answering through Deferreds (as a network store does)."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def take(self, key, rate, burst):
        return self.answer


def test_a_deferred_store_answer_is_followed() -> None:
    refused = Take(False, 0, 2.5, 10.0)
    limit = RateLimitFilter("video", RateLimitConfig(), _Later(succeed(refused)))
    results: list = []
    limit.request(filter_request()).addCallback(results.append)
    assert results[0].status == 429 and _headers(results[0])["Retry-After"] == "3"
    allowed = RateLimitFilter("video", RateLimitConfig(), _Later(succeed(Take(True, 5, 0.0, 1.0))))
    results = []
    allowed.request(filter_request()).addCallback(results.append)
    assert results == [None]


def test_a_failing_store_lets_requests_through() -> None:
    limit = RateLimitFilter("video", RateLimitConfig(), _Later(fail(ConnectionError("redis away"))))
    results: list = []
    outcome = limit.request(filter_request())
    assert isinstance(outcome, Deferred)
    outcome.addCallback(results.append)
    assert results == [None]

    class Broken:
        def take(self, key, rate, burst):
            raise OSError("mmap gone")

    assert RateLimitFilter("video", RateLimitConfig(), Broken()).request(filter_request()) is None


def test_internal_requests_are_never_limited() -> None:
    from speedproxy.cache.fetch import InternalClient

    internal = InternalClient.__new__(InternalClient)
    limit = _filter(RateLimitConfig(requests=1, per=60.0), Clock(), [])
    assert limit.request(filter_request()) is None
    assert all(limit.request(filter_request(client=internal)) is None for _ in range(5))


def test_policy_field_quotes_the_route_name() -> None:
    assert policy_field('a"b\\c', RateLimitConfig(requests=5, per=0.5)) == '"a\\"b\\\\c";q=10;w=1;spx-burst=5'
