"""The prebuilt parts of a cache hit (:mod:`speedproxy.cache.hit`), alone and through the cache filter."""

from __future__ import annotations

import pytest

from speedproxy.cache import hit, policy
from speedproxy.cache.entry import CachedObject
from speedproxy.cache.hit import fresh_answer, hit_status, whole_answer
from speedproxy.testing import IN_MEMORY_CACHED_CONFIG, InMemoryProxy
from speedproxy.testing.in_memory import InMemoryBackend

HEADERS = [(b"Content-Type", b"text/plain"), (b"ETag", b'"v1"'), (b"Age", b"7"), (b"Content-Length", b"5")]


def stored(initial_age: float = 0.0, lifetime: float = 100.0, response_time: float = 1000.0) -> CachedObject:
    return CachedObject(
        b"http://h/x",
        b"",
        (),
        200,
        b"OK",
        list(HEADERS),
        [name.lower() for name, _ in HEADERS],
        b"hello",
        policy.StoredPolicy(lifetime, initial_age, response_time),
        response_time,
    )


def expected_lines(entry: CachedObject, now: float, value: bytes) -> bytes:
    """The lines the hit path built before it was memoised, from the policy's own functions."""
    age = policy.current_age(entry.policy.initial_age, entry.policy.response_time, now)
    return entry.block + b"Age: " + policy.age_header(age) + b"\r\nCache-Status: " + value + b"\r\n"


@pytest.mark.parametrize("ttl", [0.001, 0.5, 1.0, 1.999, 59.5, 3412.7, 2147483648.0])
def test_hit_status_is_the_cache_status_of_a_fresh_hit(ttl: float) -> None:
    assert hit_status(ttl) == policy.cache_status(True, ttl=ttl)
    assert hit_status(ttl) is hit_status(ttl)  # made once


def test_hit_status_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hit, "HIT_VALUES_LIMIT", 3)
    monkeypatch.setattr(hit, "HIT_VALUES", {})
    for ttl in range(1, 20):
        assert hit_status(ttl + 0.5) == b"speedproxy; hit; ttl=%d" % ttl
        assert len(hit.HIT_VALUES) <= 3


def test_whole_answer_is_the_stored_response_with_age_and_cache_status() -> None:
    entry = stored()
    response = whole_answer(entry, 1000.0, b"speedproxy; hit; ttl=100")
    assert response.status == 200 and response.reason == "OK"
    assert response.body == b"hello" and response.file is None and response.headers == []
    assert response.block == (
        b"Content-Type: text/plain\r\nETag: \"v1\"\r\nAge: 0\r\nCache-Status: speedproxy; hit; ttl=100\r\n"
    )


def test_age_follows_the_seconds_and_the_lines_are_reused_within_one() -> None:
    entry = stored(initial_age=2.5)
    value = b"speedproxy; hit"
    made = {}
    for tenth in range(-20, 60):  # from before the response time to 6 s after
        now = 1000.0 + tenth / 10
        lines = whole_answer(entry, now, value).block
        assert lines == expected_lines(entry, now, value), now
        # Each Age's two lines are made once: the next answers of that second reuse them.
        made.setdefault(lines, entry.answer_memo[6])
        assert entry.answer_memo[6] is made[lines], now
    assert any(b"Age: 2\r\n" in lines for lines in made)  # 2.5 s old on arrival: Age 2 before and just after it
    assert any(b"Age: 8\r\n" in lines for lines in made)  # 2.5 + 5.9 s
    assert len(made) == 7  # Age 2 to 8


@pytest.mark.parametrize("lifetime, initial_age", [(100.0, 0.0), (100.3, 2.5), (7.75, 0.3), (3.2, 0.0)])
def test_fresh_answers_are_the_plain_hits_at_every_moment(lifetime: float, initial_age: float) -> None:
    entry = stored(initial_age=initial_age, lifetime=lifetime)
    stale_value = b"speedproxy; hit; fwd=stale; fwd-status=304; ttl=5"
    answered = 0
    for step in range(-40, 400):  # every 0.05 s, from before the response time until it is stale
        now = 1000.0 + step * 0.05
        age = policy.current_age(initial_age, 1000.0, now)
        ttl = lifetime - age
        if ttl <= 0:
            continue
        value = policy.cache_status(True, ttl=ttl)
        assert fresh_answer(entry, age, ttl).block == expected_lines(entry, now, value), now
        assert whole_answer(entry, now, value).block == expected_lines(entry, now, value), now
        if step % 7 == 0:  # another answer in between (a revalidated one) changes the memo
            assert whole_answer(entry, now, stale_value).block == expected_lines(entry, now, stale_value)
        answered += 1
    assert answered > 40


def test_fresh_answers_within_one_second_share_their_lines() -> None:
    entry = stored(lifetime=100.0)
    first = fresh_answer(entry, 3.1, 96.9).block
    made = entry.answer_memo[6]
    again = fresh_answer(entry, 3.8, 96.2).block  # Age 3, ttl=96 both times
    assert again == first and entry.answer_memo[6] is made
    later = fresh_answer(entry, 4.0, 96.0).block
    assert entry.answer_memo[6] is not made and b"Age: 4\r\n" in later and later.endswith(b"ttl=96\r\n")


def test_the_memo_keeps_two_lines_not_a_copy_of_the_head() -> None:
    entry = stored()
    fresh_answer(entry, 0.0, 100.0)
    assert entry.answer_memo[6] == b"Age: 0\r\nCache-Status: speedproxy; hit; ttl=100\r\n"
    assert entry.answer_memo[5] is entry.block


def test_a_fresh_answer_after_another_value_is_remade() -> None:
    entry = stored()
    other = whole_answer(entry, 1000.0, b"speedproxy; hit; ttl=100; collapsed").block
    fresh = fresh_answer(entry, 0.0, 100.0).block
    assert fresh != other and fresh.endswith(b"Cache-Status: speedproxy; hit; ttl=100\r\n")


def test_the_memo_follows_the_cache_status_value() -> None:
    entry = stored()
    first = whole_answer(entry, 1000.0, b"speedproxy; hit; ttl=100").block
    other = whole_answer(entry, 1000.0, b"speedproxy; hit; ttl=99").block
    assert other.endswith(b"Cache-Status: speedproxy; hit; ttl=99\r\n")
    assert whole_answer(entry, 1000.0, b"speedproxy; hit; ttl=100").block == first


def test_a_huge_age_is_capped_as_the_age_header_is() -> None:
    entry = stored(initial_age=3e9)
    assert b"Age: 2147483648\r\n" in whole_answer(entry, 1000.0, b"v").block


def test_a_new_head_is_never_answered_with_the_old_lines() -> None:
    entry = stored()
    assert b'ETag: "v1"' in whole_answer(entry, 1000.0, b"v").block
    # A 304 freshened the head: same second, same Cache-Status value.
    headers = [(b"Content-Type", b"text/plain"), (b"ETag", b'"v2"')]
    entry.set_headers(headers, [name.lower() for name, _ in headers])
    lines = whole_answer(entry, 1000.0, b"v").block
    assert b'ETag: "v2"' in lines and b'"v1"' not in lines
    assert lines == expected_lines(entry, 1000.0, b"v")


def test_each_answer_is_its_own_response() -> None:
    entry = stored()
    first = whole_answer(entry, 1000.0, b"v")
    first.headers.append((b"X-Added", b"by a filter"))
    first.block += b"Vary: Accept-Encoding\r\n"
    second = whole_answer(entry, 1000.0, b"v")
    assert second is not first and second.headers == []
    assert second.block == expected_lines(entry, 1000.0, b"v")


def test_a_copy_for_one_hit_starts_without_lines() -> None:
    entry = stored()
    whole_answer(entry, 1000.0, b"v")
    copy = entry.for_hit(b"other", None)
    assert copy.answer_memo is None
    assert whole_answer(copy, 1000.0, b"v").body == b"other"


# -- through the cache filter ----------------------------------------------------

CONFIG = IN_MEMORY_CACHED_CONFIG


def origin_response(extra: bytes, body: bytes = b"0123456789") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def fill(proxy: InMemoryProxy, extra: bytes = b"Cache-Control: max-age=60\r\nETag: \"a\"\r\nX-Version: 1\r\n") -> InMemoryBackend:
    client = proxy.client()
    client.send(b"GET /obj HTTP/1.1\r\nHost: h\r\n\r\n")
    backend = proxy.accept()
    backend.send(origin_response(extra))
    assert client.response().header(b"Cache-Status") == b"speedproxy; fwd=miss; fwd-status=200; stored"
    backend.take()
    return backend  # (kept in the pool: the next origin request comes on it)


def ask(proxy: InMemoryProxy, extra: bytes = b"", method: bytes = b"GET"):
    client = proxy.client()
    client.send(b"%s /obj HTTP/1.1\r\nHost: h\r\n%s\r\n" % (method, extra))
    return client.response(head_request=method == b"HEAD")


def without_request_id(headers):
    return [(name, value) for name, value in headers if name.lower() != b"x-request-id"]


def test_hits_carry_age_and_ttl_across_seconds() -> None:
    proxy = InMemoryProxy(CONFIG)
    fill(proxy)
    seen = []
    for step in (0.0, 0.25, 0.75, 0.75, 0.25, 0.5, 55.0):  # (exact in binary)
        proxy.reactor.advance(step)
        response = ask(proxy)
        assert response.status == 200 and response.body == b"0123456789"
        seen.append((response.header(b"Age"), response.header(b"Cache-Status")))
    assert seen == [
        (b"0", b"speedproxy; hit; ttl=60"),
        (b"0", b"speedproxy; hit; ttl=59"),  # 0.25 s old: 59.75 s left
        (b"1", b"speedproxy; hit; ttl=59"),  # 1.0
        (b"1", b"speedproxy; hit; ttl=58"),  # 1.75
        (b"2", b"speedproxy; hit; ttl=58"),  # 2.0
        (b"2", b"speedproxy; hit; ttl=57"),  # 2.5
        (b"57", b"speedproxy; hit; ttl=2"),  # 57.5
    ]


def test_a_304_refreshed_head_replaces_the_memoised_one() -> None:
    proxy = InMemoryProxy(CONFIG)
    backend = fill(proxy, b"Cache-Control: max-age=10\r\nETag: \"a\"\r\nX-Version: 1\r\n")
    assert ask(proxy).header(b"X-Version") == b"1"
    proxy.reactor.advance(11)  # stale: revalidated
    client = proxy.client()
    client.send(b"GET /obj HTTP/1.1\r\nHost: h\r\n\r\n")
    assert b'If-None-Match: "a"' in backend.received()
    backend.send(b"HTTP/1.1 304 Not Modified\r\nCache-Control: max-age=60\r\nETag: \"a\"\r\nX-Version: 2\r\n\r\n")
    refreshed = client.response()
    assert refreshed.header(b"X-Version") == b"2" and refreshed.body == b"0123456789"
    assert refreshed.header(b"Cache-Status") == b"speedproxy; hit; fwd=stale; fwd-status=304; ttl=60"
    again = ask(proxy)  # the same second as the refresh
    assert again.header(b"X-Version") == b"2"
    assert again.header(b"Cache-Status") == b"speedproxy; hit; ttl=60"
    assert again.all(b"Age") == [b"0"]


def test_head_range_and_conditional_answers_beside_memoised_hits() -> None:
    proxy = InMemoryProxy(CONFIG)
    fill(proxy)
    whole = ask(proxy)
    assert whole.status == 200 and whole.body == b"0123456789"
    head = ask(proxy, method=b"HEAD")
    assert head.status == 200 and head.body == b"" and head.header(b"Content-Length") == b"10"
    assert head.header(b"Cache-Status") == b"speedproxy; hit; ttl=60" and head.header(b"Age") == b"0"
    part = ask(proxy, b"Range: bytes=2-4\r\n")
    assert part.status == 206 and part.body == b"234"
    assert part.header(b"Content-Range") == b"bytes 2-4/10" and part.header(b"Age") == b"0"
    assert part.header(b"Cache-Status") == b"speedproxy; hit; ttl=60"
    unsatisfiable = ask(proxy, b"Range: bytes=20-30\r\n")
    assert unsatisfiable.status == 416 and unsatisfiable.header(b"Content-Range") == b"bytes */10"
    not_modified = ask(proxy, b'If-None-Match: "a"\r\n')
    assert not_modified.status == 304 and not_modified.body == b""
    assert not_modified.header(b"ETag") == b'"a"' and not_modified.header(b"Age") == b"0"
    failed = ask(proxy, b'If-Match: "b"\r\n')
    assert failed.status == 412
    after = ask(proxy)  # the whole response again, its lines untouched by the others
    assert after.status == 200 and after.body == b"0123456789"
    assert without_request_id(after.headers) == without_request_id(whole.headers)
    assert after.all(b"Age") == [b"0"] and after.all(b"Cache-Status") == [b"speedproxy; hit; ttl=60"]
    assert after.header(b"Content-Range") is None


def test_request_directives_still_apply_to_hits() -> None:
    proxy = InMemoryProxy(CONFIG)
    backend = fill(proxy)
    proxy.reactor.advance(30)
    assert ask(proxy, b"Cache-Control: max-age=40\r\n").header(b"Cache-Status") == b"speedproxy; hit; ttl=30"
    assert ask(proxy, b"Cache-Control: min-fresh=20\r\n").header(b"Cache-Status") == b"speedproxy; hit; ttl=30"
    assert ask(proxy, b"Pragma: x\r\n").header(b"Cache-Status") == b"speedproxy; hit; ttl=30"
    assert backend.received() == b""
    too_old = proxy.client()
    too_old.send(b"GET /obj HTTP/1.1\r\nHost: h\r\nCache-Control: max-age=10\r\n\r\n")
    assert b'If-None-Match: "a"' in backend.take()  # too old for this client: revalidated
    backend.send(b"HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n")
    assert too_old.response().header(b"Cache-Status").startswith(b"speedproxy; hit; fwd=request; fwd-status=304")
    for extra in (b"Cache-Control: no-store\r\n", b"Pragma: no-cache\r\n", b"Cache-Control: no-cache\r\n"):
        client = proxy.client()
        client.send(b"GET /obj HTTP/1.1\r\nHost: h\r\n%s\r\n" % extra)
        assert b"GET /obj" in backend.take(), extra  # not from the cache
        backend.send(origin_response(b"Cache-Control: max-age=60\r\nETag: \"a\"\r\n"))
        assert b"hit" not in client.response().header(b"Cache-Status"), extra


def test_hits_are_counted() -> None:
    proxy = InMemoryProxy(CONFIG)
    fill(proxy)
    for _ in range(3):
        ask(proxy)
    route = proxy.core.router.match(b"h", b"/obj")
    stats = proxy.core.stats
    from speedproxy.stats.segment import ROUTE_CACHE_WORDS

    words = stats.words
    base = stats.route_cache_base + route.stats_index * ROUTE_CACHE_WORDS
    from speedproxy.cache.filter import HIT

    assert words[base + HIT] == 3
