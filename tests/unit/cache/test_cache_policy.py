"""Tests for :mod:`speedproxy.cache.policy` (and the modules it re-exports).

Each test names the RFC section it checks: RFC 9111 (HTTP Caching), RFC 5861
(stale-while-revalidate, stale-if-error), RFC 9110 (semantics: dates,
validators, conditional and range requests) and RFC 9211 (Cache-Status).
"""

from __future__ import annotations

import calendar
import math
import time
import timeit
from typing import List, Tuple, Union

import pytest
from hypothesis import given
from hypothesis import strategies as st

from speedproxy.cache import policy
from speedproxy.cache.policy import (
    FRESH,
    MAX_DELTA,
    MUST_REVALIDATE,
    NO_DIRECTIVES,
    STALE_REVALIDATE,
    STALE_SERVABLE,
    UNSATISFIABLE,
    RequestDirectives,
    StoredPolicy,
    age_header,
    age_value,
    cache_key,
    cache_status,
    content_range,
    current_age,
    delta_seconds,
    evaluate,
    evaluate_conditionals,
    freshen_headers,
    freshness_lifetime,
    http_date,
    if_range_matches,
    initial_age,
    invalidates,
    invalidation_targets,
    multipart_byteranges,
    not_modified_headers,
    parse_cache_control,
    parse_http_date,
    parse_range,
    range_request,
    request_directives,
    revalidation_matches,
    stale_on_error,
    storable,
    storage_headers,
    stored_policy,
    unsatisfied_range,
    validators,
    variant_key,
    vary_names,
)
from speedproxy.cache.conditional import etag_matches, parse_etags

NOW = 1_700_000_000.0
Pair = Tuple[Union[str, bytes], Union[str, bytes]]


def _b(value: Union[str, bytes]) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def hdrs(*pairs: Pair) -> Tuple[List[Tuple[bytes, bytes]], List[bytes]]:
    """``(headers, lowered)`` as the parser makes them."""
    headers = [(_b(name), _b(value)) for name, value in pairs]
    return headers, [name.lower() for name, _ in headers]


def date(offset: float = 0.0) -> bytes:
    return http_date(NOW + offset)


def is_storable(status=200, request=(), response=(), method=b"GET", authorization=False, heuristic=True):
    req_headers, req_lowered = hdrs(*request)
    resp_headers, resp_lowered = hdrs(*response)
    return storable(
        method,
        status,
        req_headers,
        req_lowered,
        resp_headers,
        resp_lowered,
        has_authorization=authorization,
        heuristic_allowed_by_config=heuristic,
    )


def lifetime(*response: Pair, status: int = 200, default_ttl: float = 0.0, **kwargs) -> float:
    headers, lowered = hdrs(*response)
    return freshness_lifetime(status, headers, lowered, default_ttl, response_time=NOW, **kwargs)


def policy_for(*response: Pair, age: float = 0.0, status: int = 200, **kwargs) -> StoredPolicy:
    """A StoredPolicy for a response received at NOW - age (no delay, Date = receipt)."""
    headers, lowered = hdrs(("Date", date(-age)), *response)
    return stored_policy(status, headers, lowered, NOW - age, NOW - age, **kwargs)


def directives(*request: Pair) -> RequestDirectives:
    return request_directives(*hdrs(*request))


# ------------------------------------------------------------------ dates


class TestHttpDate:
    STAMP = float(calendar.timegm((1994, 11, 6, 8, 49, 37)))

    @pytest.mark.parametrize(
        "value",
        [
            b"Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
            b"Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
            b"Sun Nov  6 08:49:37 1994",  # obsolete asctime
            b"sun, 06 NOV 1994 08:49:37 gmt",  # RFC 9111 4.2: case-insensitive
            b"Sun, 6 Nov 1994 08:49:37 GMT",  # robust (RFC 5322)
        ],
    )
    def test_rfc9110_5_6_7_formats(self, value):
        assert parse_http_date(value) == self.STAMP

    @pytest.mark.parametrize(
        "value",
        [
            b"0",
            b"-1",
            b"",
            b"garbage",
            b"Sun, 06 Nov 1994",
            b"Sun, 31 Feb 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 25:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
        ],
    )
    def test_rfc9110_5_6_7_invalid(self, value):
        assert parse_http_date(value) is None

    def test_none(self):
        assert parse_http_date(None) is None

    def test_rfc9110_5_6_7_two_digit_year_more_than_50_years_ahead_is_past(self):
        this_year = time.gmtime().tm_year
        ahead = (this_year + 60) % 100
        parsed = parse_http_date(b"Monday, 01-Jan-%02d 00:00:00 GMT" % ahead)
        assert time.gmtime(parsed).tm_year == this_year + 60 - 100
        near = (this_year + 10) % 100
        parsed = parse_http_date(b"Monday, 01-Jan-%02d 00:00:00 GMT" % near)
        assert time.gmtime(parsed).tm_year == this_year + 10

    def test_leap_day(self):
        assert parse_http_date(b"Tue, 29 Feb 2000 12:00:00 GMT") == calendar.timegm((2000, 2, 29, 12, 0, 0))
        assert parse_http_date(b"Thu, 29 Feb 2001 12:00:00 GMT") is None

    def test_format_is_imf_fixdate(self):
        assert http_date(self.STAMP) == b"Sun, 06 Nov 1994 08:49:37 GMT"

    @given(st.integers(min_value=-(10**9), max_value=253402300799))
    def test_round_trip(self, stamp):
        assert parse_http_date(http_date(stamp)) == stamp


# ------------------------------------------------------------- Cache-Control


class TestParseCacheControl:
    def test_rfc9111_5_2_names_lowered_arguments_kept(self):
        assert parse_cache_control([b"Max-Age=60, PUBLIC, no-transform"]) == {
            b"max-age": b"60",
            b"public": None,
            b"no-transform": None,
        }

    def test_rfc9111_5_2_quoted_arguments_unquoted(self):
        parsed = parse_cache_control([b'max-age="60", no-cache="Set-Cookie, X-A", ext="a\\"b"'])
        assert parsed == {b"max-age": b"60", b"no-cache": b"Set-Cookie, X-A", b"ext": b'a"b'}

    def test_several_field_lines(self):
        assert parse_cache_control([b"public", b"max-age=5"]) == {b"public": None, b"max-age": b"5"}

    def test_rfc9111_4_2_1_duplicates_first_wins(self):
        assert parse_cache_control([b"max-age=3600, max-age=1"])[b"max-age"] == b"3600"
        assert parse_cache_control([b"max-age=1", b"max-age=3600"])[b"max-age"] == b"1"

    @pytest.mark.parametrize(
        "value,expected",
        [
            (b"", {}),
            (b" , ,", {}),
            (b"  no-store  ,", {b"no-store": None}),
            (b'no-cache="unterminated, max-age=5', {b"no-cache": b"unterminated, max-age=5"}),
            (b"max-age = 5", {b"max-age": b"5"}),
            (b"=5, public", {b"public": None}),
        ],
    )
    def test_junk_tolerated(self, value, expected):
        assert parse_cache_control([value]) == expected

    @given(st.lists(st.binary(max_size=40), max_size=4))
    def test_never_raises(self, values):
        parsed = parse_cache_control(values)
        assert all(name == name.strip().lower() and name for name in parsed)

    @given(
        st.dictionaries(
            st.from_regex(rb"[a-z][a-z0-9-]{0,10}", fullmatch=True),
            st.one_of(st.none(), st.from_regex(rb"[a-zA-Z0-9 ,=]{0,10}", fullmatch=True)),
            max_size=6,
        )
    )
    def test_round_trip_with_quoted_arguments(self, wanted):
        text = b", ".join(
            name if arg is None else name + b'="' + arg + b'"' for name, arg in wanted.items()
        )
        assert parse_cache_control([text]) == wanted


class TestDeltaSeconds:
    @pytest.mark.parametrize(
        "value,expected",
        [
            (b"0", 0),
            (b"3600", 3600),
            (b"003600", 3600),
            (b"2147483647", 2147483647),
            (b"2147483648", MAX_DELTA),  # RFC 9111 1.2.2: at least 2^31
            (b"99999999999999999999", MAX_DELTA),
            (b"-1", None),
            (b"1.5", None),
            (b"abc", None),
            (b"", None),
            (b" 5", None),
            (None, None),
        ],
    )
    def test_rfc9111_1_2_2(self, value, expected):
        assert delta_seconds(value) == expected


class TestRequestDirectives:
    def test_none_is_shared_singleton(self):
        assert directives(("Accept", "*/*")) is NO_DIRECTIVES

    def test_rfc9111_5_2_1_all_directives(self):
        parsed = directives(
            ("Cache-Control", "no-cache, no-store, max-age=5, max-stale=7, min-fresh=3, only-if-cached, stale-if-error=9")
        )
        assert (parsed.no_cache, parsed.no_store, parsed.only_if_cached) == (True, True, True)
        assert (parsed.max_age, parsed.max_stale, parsed.min_fresh, parsed.stale_if_error) == (5, 7, 3, 9)

    def test_rfc9111_5_2_1_2_bare_max_stale_is_any(self):
        assert directives(("Cache-Control", "max-stale")).max_stale == math.inf

    def test_invalid_max_stale_ignored_invalid_max_age_is_zero(self):
        parsed = directives(("Cache-Control", "max-stale=abc, max-age=abc"))
        assert parsed.max_stale is None
        assert parsed.max_age == 0

    def test_rfc9111_5_4_pragma_no_cache_without_cache_control(self):
        assert directives(("Pragma", "no-cache")).no_cache
        assert directives(("Pragma", "foo, No-Cache")).no_cache
        assert not directives(("Pragma", "foo")).no_cache

    def test_rfc9111_5_4_pragma_ignored_with_cache_control(self):
        assert not directives(("Pragma", "no-cache"), ("Cache-Control", "max-stale=5")).no_cache

    def test_several_lines_and_memo(self):
        first = directives(("Cache-Control", "max-age=5"), ("cache-control", "no-store"))
        assert first.max_age == 5 and first.no_store
        assert directives(("Cache-Control", "max-age=5"), ("cache-control", "no-store")) is first


# ------------------------------------------------------------------ storing


class TestStorable:
    def test_rfc9111_3_plain_200_is_heuristically_storable(self):
        assert is_storable() == (True, "")

    @pytest.mark.parametrize("method", [b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS"])
    def test_rfc9111_3_only_get_is_stored(self, method):
        assert is_storable(method=method, response=[("Cache-Control", "max-age=60")]) == (False, "method")

    @pytest.mark.parametrize("status,reason", [(100, "status"), (304, "status"), (206, "partial")])
    def test_rfc9111_3_final_understood_status(self, status, reason):
        assert is_storable(status, response=[("Cache-Control", "max-age=60")]) == (False, reason)

    def test_rfc9111_5_2_1_5_request_no_store(self):
        assert is_storable(request=[("Cache-Control", "no-store")]) == (False, "request-no-store")

    def test_rfc9111_5_2_2_5_response_no_store(self):
        assert is_storable(response=[("Cache-Control", "max-age=60, No-Store")]) == (False, "no-store")

    def test_rfc9111_5_2_2_3_must_understand_overrides_no_store_for_understood_status(self):
        assert is_storable(response=[("Cache-Control", "must-understand, no-store, max-age=60")]) == (True, "")

    def test_rfc9111_5_2_2_3_must_understand_unknown_status(self):
        response = [("Cache-Control", "must-understand, no-store, max-age=60")]
        assert is_storable(299, response=response) == (False, "must-understand")

    @pytest.mark.parametrize("value", ["private", 'private="Set-Cookie"', "public, private, max-age=60"])
    def test_rfc9111_5_2_2_7_private_not_in_shared_cache(self, value):
        assert is_storable(response=[("Cache-Control", value)]) == (False, "private")

    def test_rfc9111_3_5_authorization_needs_explicit_permission(self):
        assert is_storable(authorization=True, response=[("Cache-Control", "max-age=60")]) == (
            False,
            "authorization",
        )
        for value in ("public", "s-maxage=60", "must-revalidate, max-age=60"):
            assert is_storable(authorization=True, response=[("Cache-Control", value)]) == (True, "")

    def test_rfc9111_4_1_vary_star_never_reusable(self):
        response = [("Cache-Control", "max-age=60"), ("Vary", "Accept, *")]
        assert is_storable(response=response) == (False, "vary-star")

    def test_set_cookie_only_with_explicit_shared_permission(self):
        cookie = ("Set-Cookie", "a=b")
        assert is_storable(response=[("Cache-Control", "max-age=60"), cookie]) == (False, "set-cookie")
        assert is_storable(response=[("Cache-Control", "public, max-age=60"), cookie]) == (True, "")
        assert is_storable(response=[("Cache-Control", "s-maxage=60"), cookie]) == (True, "")

    @pytest.mark.parametrize("status", [302, 303, 307, 400, 403, 500, 503, 599])
    def test_rfc9111_3_non_heuristic_status_needs_explicit_freshness(self, status):
        assert is_storable(status) == (False, "no-freshness")
        assert is_storable(status, response=[("Cache-Control", "max-age=60")]) == (True, "")
        assert is_storable(status, response=[("Expires", date(60))]) == (True, "")
        assert is_storable(status, response=[("Cache-Control", "public")]) == (True, "")

    @pytest.mark.parametrize("status", sorted(policy.HEURISTIC_STATUSES - {206}))
    def test_rfc9110_15_1_heuristically_cacheable(self, status):
        assert is_storable(status) == (True, "")
        assert is_storable(status, heuristic=False) == (False, "no-freshness")

    def test_rfc9111_5_2_2_4_no_cache_response_is_stored(self):
        assert is_storable(response=[("Cache-Control", "no-cache"), ("ETag", '"x"')]) == (True, "")


# ---------------------------------------------------------------- freshness


class TestFreshnessLifetime:
    def test_rfc9111_4_2_1_s_maxage_first(self):
        assert lifetime(("Cache-Control", "max-age=10, s-maxage=20"), ("Expires", date(30))) == 20

    def test_rfc9111_4_2_1_max_age_over_expires(self):
        assert lifetime(("Cache-Control", "max-age=10"), ("Expires", date(30))) == 10

    def test_rfc9111_4_2_1_expires_minus_date(self):
        assert lifetime(("Date", date(-100)), ("Expires", date(200))) == 300

    def test_rfc9111_4_2_1_expires_without_date_uses_response_time(self):
        assert lifetime(("Expires", date(200))) == 200

    @pytest.mark.parametrize("value", ["0", "-1", "yesterday", ""])
    def test_rfc9111_5_3_invalid_expires_means_expired(self, value):
        assert lifetime(("Expires", value), default_ttl=600) == 0

    def test_rfc9111_5_3_expires_in_the_past(self):
        assert lifetime(("Date", date()), ("Expires", date(-10))) == 0

    @pytest.mark.parametrize("value", ["max-age=abc", "max-age=-1", "max-age=1.5", "max-age"])
    def test_rfc9111_4_2_1_invalid_max_age_is_stale(self, value):
        assert lifetime(("Cache-Control", value), ("Expires", date(300)), default_ttl=600) == 0

    def test_rfc9111_4_2_1_duplicate_max_age_first_wins(self):
        assert lifetime(("Cache-Control", "max-age=60"), ("Cache-Control", "max-age=1")) == 60

    def test_rfc9111_1_2_2_huge_max_age_capped(self):
        assert lifetime(("Cache-Control", "max-age=99999999999")) == MAX_DELTA

    def test_rfc9111_4_2_2_heuristic_is_default_ttl(self):
        assert lifetime(default_ttl=600) == 600
        assert lifetime(default_ttl=600, heuristic_allowed=False) == 0
        assert lifetime(status=302, default_ttl=600) == 0
        assert lifetime(("Cache-Control", "public"), status=302, default_ttl=600) == 600

    def test_rfc9111_4_2_2_last_modified_heuristic_capped_by_default_ttl(self):
        recent = ("Last-Modified", date(-1000))
        assert lifetime(("Date", date()), recent, default_ttl=600) == 100  # 10% of 1000 s
        assert lifetime(("Date", date()), ("Last-Modified", date(-86400)), default_ttl=600) == 600
        assert lifetime(("Date", date()), recent, default_ttl=600, lm_factor=0) == 600
        assert lifetime(("Date", date()), ("Last-Modified", date(50)), default_ttl=600) == 0

    def test_rfc9111_4_2_2_no_heuristic_with_explicit_expiration(self):
        assert lifetime(("Cache-Control", "max-age=5"), default_ttl=600) == 5


class TestAge:
    def test_rfc9111_4_2_3_corrected_initial_age(self):
        headers, lowered = hdrs(("Date", date(-10)), ("Age", "30"))
        # apparent_age = 10 + 2; corrected_age_value = 30 + 4 (response delay)
        assert initial_age(headers, lowered, NOW - 2, NOW + 2) == 34
        headers, lowered = hdrs(("Date", date(-100)), ("Age", "30"))
        assert initial_age(headers, lowered, NOW, NOW) == 100

    def test_rfc9111_4_2_3_date_in_the_future_clamps_apparent_age(self):
        headers, lowered = hdrs(("Date", date(1000)))
        assert initial_age(headers, lowered, NOW, NOW) == 0

    def test_missing_date_means_no_apparent_age(self):
        headers, lowered = hdrs(("Age", "5"))
        assert initial_age(headers, lowered, NOW - 1, NOW) == 6

    @pytest.mark.parametrize(
        "value,expected", [("7", 7), ("10, 20", 10), ("-5", 0), ("1.5", 0), ("abc", 0), ("99999999999", MAX_DELTA)]
    )
    def test_rfc9111_5_1_age_first_member_invalid_ignored(self, value, expected):
        assert age_value(*hdrs(("Age", value))) == expected

    def test_rfc9111_4_2_3_current_age(self):
        assert current_age(5.0, NOW, NOW + 10) == 15
        assert current_age(5.0, NOW, NOW - 10) == 5  # the clock went back


class TestEvaluate:
    def test_rfc9111_4_2_fresh_while_age_below_lifetime(self):
        stored = policy_for(("Cache-Control", "max-age=100"), age=40)
        assert evaluate(stored, NO_DIRECTIVES, NOW) == (FRESH, 60)

    def test_rfc9111_4_2_stale_at_lifetime(self):
        stored = policy_for(("Cache-Control", "max-age=100"), age=100)
        assert evaluate(stored, NO_DIRECTIVES, NOW) == (MUST_REVALIDATE, 0)

    def test_rfc9111_4_2_age_header_counts(self):
        stored = policy_for(("Cache-Control", "max-age=100"), ("Age", "90"), age=20)
        assert evaluate(stored, NO_DIRECTIVES, NOW) == (MUST_REVALIDATE, -10)

    def test_rfc9111_5_2_2_4_response_no_cache_always_revalidates(self):
        stored = policy_for(("Cache-Control", "no-cache, max-age=100"))
        assert evaluate(stored, NO_DIRECTIVES, NOW)[0] == MUST_REVALIDATE
        assert evaluate(stored, directives(("Cache-Control", "max-stale")), NOW)[0] == MUST_REVALIDATE

    def test_rfc9111_5_2_1_4_request_no_cache(self):
        stored = policy_for(("Cache-Control", "max-age=100"))
        assert evaluate(stored, directives(("Cache-Control", "no-cache")), NOW)[0] == MUST_REVALIDATE
        assert evaluate(stored, directives(("Pragma", "no-cache")), NOW)[0] == MUST_REVALIDATE

    def test_rfc9111_5_2_1_1_request_max_age(self):
        stored = policy_for(("Cache-Control", "max-age=100"), age=30)
        assert evaluate(stored, directives(("Cache-Control", "max-age=60")), NOW)[0] == FRESH
        assert evaluate(stored, directives(("Cache-Control", "max-age=10")), NOW)[0] == MUST_REVALIDATE
        assert evaluate(stored, directives(("Cache-Control", "max-age=0")), NOW)[0] == MUST_REVALIDATE

    def test_rfc9111_5_2_1_1_max_age_beats_max_stale_and_swr(self):
        stored = policy_for(("Cache-Control", "max-age=10, stale-while-revalidate=100"), age=30)
        request = directives(("Cache-Control", "max-age=20, max-stale=100"))
        assert evaluate(stored, request, NOW)[0] == MUST_REVALIDATE

    def test_rfc9111_5_2_1_3_min_fresh(self):
        stored = policy_for(("Cache-Control", "max-age=100"), age=30)
        assert evaluate(stored, directives(("Cache-Control", "min-fresh=70")), NOW)[0] == FRESH
        assert evaluate(stored, directives(("Cache-Control", "min-fresh=71")), NOW)[0] == MUST_REVALIDATE

    def test_rfc9111_5_2_1_2_max_stale(self):
        stored = policy_for(("Cache-Control", "max-age=100"), age=130)
        assert evaluate(stored, directives(("Cache-Control", "max-stale=30")), NOW) == (STALE_SERVABLE, -30)
        assert evaluate(stored, directives(("Cache-Control", "max-stale=29")), NOW)[0] == MUST_REVALIDATE
        assert evaluate(stored, directives(("Cache-Control", "max-stale")), NOW)[0] == STALE_SERVABLE

    @pytest.mark.parametrize("value", ["must-revalidate", "proxy-revalidate", "s-maxage=100"])
    def test_rfc9111_5_2_2_revalidate_directives_forbid_stale(self, value):
        stored = policy_for(("Cache-Control", "max-age=100, stale-while-revalidate=60, " + value), age=130)
        assert evaluate(stored, directives(("Cache-Control", "max-stale")), NOW)[0] == MUST_REVALIDATE
        assert evaluate(stored, NO_DIRECTIVES, NOW)[0] == MUST_REVALIDATE
        assert not stale_on_error(stored, directives(("Cache-Control", "stale-if-error=999")), NOW)

    def test_rfc5861_3_stale_while_revalidate(self):
        stored = policy_for(("Cache-Control", "max-age=100, stale-while-revalidate=60"), age=130)
        assert evaluate(stored, NO_DIRECTIVES, NOW) == (STALE_REVALIDATE, -30)
        stored = policy_for(("Cache-Control", "max-age=100, stale-while-revalidate=60"), age=160)
        assert evaluate(stored, NO_DIRECTIVES, NOW)[0] == MUST_REVALIDATE

    def test_rfc5861_3_route_default_and_response_override(self):
        stored = policy_for(("Cache-Control", "max-age=100"), age=130, stale_while_revalidate=60)
        assert evaluate(stored, NO_DIRECTIVES, NOW)[0] == STALE_REVALIDATE
        stored = policy_for(
            ("Cache-Control", "max-age=100, stale-while-revalidate=10"), age=130, stale_while_revalidate=60
        )
        assert evaluate(stored, NO_DIRECTIVES, NOW)[0] == MUST_REVALIDATE

    def test_rfc9111_4_2_4_route_default_not_against_no_cache(self):
        stored = policy_for(("Cache-Control", "no-cache"), age=10, stale_while_revalidate=60, stale_if_error=60)
        assert stored.swr == stored.sie == 0
        assert not stale_on_error(stored, NO_DIRECTIVES, NOW)

    def test_min_fresh_refuses_stale_while_revalidate(self):
        stored = policy_for(("Cache-Control", "max-age=100, stale-while-revalidate=60"), age=130)
        assert evaluate(stored, directives(("Cache-Control", "min-fresh=1")), NOW)[0] == MUST_REVALIDATE

    def test_heuristic_policy(self):
        stored = policy_for(age=10, default_ttl=60)
        assert evaluate(stored, NO_DIRECTIVES, NOW) == (FRESH, 50)

    @given(
        max_age=st.integers(0, 10**6),
        age=st.floats(0, 2 * 10**6, allow_nan=False),
        request=st.sampled_from(["", "no-cache", "max-age=0", "max-stale", "min-fresh=5", "max-age=100"]),
        response_extra=st.sampled_from(["", ", no-cache", ", must-revalidate", ", stale-while-revalidate=30"]),
    )
    def test_fresh_only_when_rfc9111_4_2_says_fresh(self, max_age, age, request, response_extra):
        headers, lowered = hdrs(("Cache-Control", "max-age=%d%s" % (max_age, response_extra)))
        stored = stored_policy(200, headers, lowered, NOW - age, NOW - age)
        req = directives(("Cache-Control", request)) if request else NO_DIRECTIVES
        outcome, ttl = evaluate(stored, req, NOW)
        # Within the resolution of a float of NOW's size (2.4e-7 s): a smaller
        # age is lost in NOW - age.
        assert ttl == pytest.approx(max_age - age, abs=1e-6)
        if outcome == FRESH:
            assert age < max_age and "no-cache" not in response_extra and not req.no_cache
        if outcome in (STALE_SERVABLE, STALE_REVALIDATE):
            assert ttl <= 0 and "no-cache" not in response_extra and "must-revalidate" not in response_extra


class TestStaleOnError:
    def test_rfc5861_4_stale_if_error_window(self):
        stored = policy_for(("Cache-Control", "max-age=100, stale-if-error=60"), age=150)
        assert stale_on_error(stored, NO_DIRECTIVES, NOW)
        stored = policy_for(("Cache-Control", "max-age=100, stale-if-error=60"), age=170)
        assert not stale_on_error(stored, NO_DIRECTIVES, NOW)

    def test_route_default(self):
        stored = policy_for(("Cache-Control", "max-age=100"), age=150, stale_if_error=3600)
        assert stale_on_error(stored, NO_DIRECTIVES, NOW)
        assert not stale_on_error(policy_for(("Cache-Control", "max-age=100"), age=150), NO_DIRECTIVES, NOW)

    def test_rfc5861_4_request_stale_if_error_and_max_stale(self):
        stored = policy_for(("Cache-Control", "max-age=100"), age=150)
        assert stale_on_error(stored, directives(("Cache-Control", "stale-if-error=50")), NOW)
        assert not stale_on_error(stored, directives(("Cache-Control", "stale-if-error=49")), NOW)
        assert stale_on_error(stored, directives(("Cache-Control", "max-stale=60")), NOW)

    def test_request_no_cache_refuses_unless_it_allows(self):
        stored = policy_for(("Cache-Control", "max-age=100, stale-if-error=600"), age=150)
        assert not stale_on_error(stored, directives(("Cache-Control", "no-cache")), NOW)
        assert stale_on_error(stored, directives(("Cache-Control", "no-cache, stale-if-error=60")), NOW)

    def test_rfc5861_4_errors(self):
        assert policy.ERROR_STATUSES == {500, 502, 503, 504}


# --------------------------------------------------------------------- Vary


class TestVary:
    def test_rfc9111_4_1_names(self):
        assert vary_names(*hdrs(("Vary", "Accept-Encoding, accept"), ("vary", "User-Agent, ACCEPT"))) == (
            b"accept",
            b"accept-encoding",
            b"user-agent",
        )
        assert vary_names(*hdrs()) == ()
        assert vary_names(*hdrs(("Vary", ""))) == ()

    def test_rfc9111_4_1_star(self):
        assert vary_names(*hdrs(("Vary", "Accept, *"))) is None

    def test_rfc9111_4_1_combined_lines_and_whitespace_match(self):
        names = (b"accept",)
        one = variant_key(names, *hdrs(("Accept", "text/html,  application/json")))
        two = variant_key(names, *hdrs(("accept", "text/html"), ("ACCEPT", "application/json")))
        three = variant_key(names, *hdrs(("Accept", "text/html,application/json,")))
        assert one == two == three

    def test_rfc9111_4_1_absent_differs_from_empty(self):
        names = (b"accept-language",)
        assert variant_key(names, *hdrs()) != variant_key(names, *hdrs(("Accept-Language", "")))

    def test_different_values_differ(self):
        names = (b"accept-encoding", b"accept-language")
        assert variant_key(names, *hdrs(("Accept-Encoding", "gzip"))) != variant_key(
            names, *hdrs(("Accept-Encoding", "br"))
        )

    def test_case_insensitive_values_normalised(self):
        names = (b"accept-encoding",)
        assert variant_key(names, *hdrs(("Accept-Encoding", "GZIP, Br"))) == variant_key(
            names, *hdrs(("Accept-Encoding", "gzip,br"))
        )
        names = (b"x-token",)
        assert variant_key(names, *hdrs(("X-Token", "A"))) != variant_key(names, *hdrs(("X-Token", "a")))

    def test_no_names(self):
        assert variant_key((), *hdrs(("Accept", "x"))) == b""

    @given(
        st.lists(st.from_regex(rb"[a-z0-9/*;=.]{1,8}", fullmatch=True), min_size=1, max_size=5),
        st.lists(st.sampled_from([b"", b" ", b"  ", b"\t"]), min_size=10, max_size=10),
        st.integers(1, 3),
    )
    def test_whitespace_and_line_splits_do_not_matter(self, members, spaces, lines):
        names = (b"accept",)
        plain = variant_key(names, *hdrs(("Accept", b", ".join(members))))
        odd = b",".join(spaces[i % 10] + member + spaces[(i + 1) % 10] for i, member in enumerate(members))
        assert variant_key(names, *hdrs(("Accept", odd.strip(b" \t")))) == plain
        size = -(-len(members) // lines)
        chunks = [b", ".join(members[i : i + size]) for i in range(0, len(members), size)]
        assert variant_key(names, *hdrs(*[("Accept", chunk) for chunk in chunks])) == plain


# ------------------------------------------------------ conditional requests


def conditional(request, stored, method=b"GET", status=200):
    return evaluate_conditionals(method, *hdrs(*request), *hdrs(*stored), stored_status=status)


LM = "Sun, 06 Nov 1994 08:49:37 GMT"
EARLIER = "Sat, 05 Nov 1994 08:49:37 GMT"
LATER = "Mon, 07 Nov 1994 08:49:37 GMT"


class TestConditionals:
    STORED = [("ETag", '"v1"'), ("Last-Modified", LM)]

    def test_no_preconditions(self):
        assert conditional([("Accept", "*/*")], self.STORED) is None

    @pytest.mark.parametrize('value', ['"v1"', 'W/"v1"', '"v0", "v1"', '"v0",W/"v1"', "*", ' "a,b" , "v1"'])
    def test_rfc9110_13_1_2_if_none_match_weak_comparison(self, value):
        assert conditional([("If-None-Match", value)], self.STORED) == 304

    def test_rfc9110_13_1_2_weak_stored_etag_matches(self):
        assert conditional([("If-None-Match", '"v1"')], [("ETag", 'W/"v1"')]) == 304

    def test_rfc9110_13_1_2_no_match(self):
        assert conditional([("If-None-Match", '"v2", "v1x"')], self.STORED) is None
        assert conditional([("If-None-Match", '"v1"')], [("Last-Modified", LM)]) is None

    def test_rfc9110_13_1_2_several_lines(self):
        assert conditional([("If-None-Match", '"a"'), ("If-None-Match", '"v1"')], self.STORED) == 304

    def test_rfc9110_13_2_2_if_none_match_takes_precedence_over_if_modified_since(self):
        assert conditional([("If-None-Match", '"other"'), ("If-Modified-Since", LATER)], self.STORED) is None

    def test_rfc9110_13_1_3_if_modified_since(self):
        assert conditional([("If-Modified-Since", LM)], self.STORED) == 304
        assert conditional([("If-Modified-Since", LATER)], self.STORED) == 304
        assert conditional([("If-Modified-Since", EARLIER)], self.STORED) is None
        assert conditional([("If-Modified-Since", "Sunday, 06-Nov-94 08:49:37 GMT")], self.STORED) == 304

    def test_rfc9110_13_1_3_invalid_or_list_ignored(self):
        assert conditional([("If-Modified-Since", "yesterday")], self.STORED) is None
        assert conditional([("If-Modified-Since", LATER + ", " + LATER)], self.STORED) is None
        assert conditional([("If-Modified-Since", LATER), ("If-Modified-Since", LATER)], self.STORED) is None

    def test_rfc9110_13_1_3_without_last_modified(self):
        assert conditional([("If-Modified-Since", LATER)], [("ETag", '"v1"')]) is None

    def test_rfc9110_13_1_3_only_get_and_head(self):
        assert conditional([("If-None-Match", "*")], self.STORED, method=b"HEAD") == 304
        assert conditional([("If-None-Match", "*")], self.STORED, method=b"POST") is None

    def test_rfc9110_13_2_1_ignored_when_status_not_2xx(self):
        assert conditional([("If-None-Match", '"v1"')], self.STORED, status=404) is None

    def test_rfc9110_13_1_1_if_match(self):
        assert conditional([("If-Match", '"v1"')], self.STORED) is None
        assert conditional([("If-Match", "*")], self.STORED) is None
        assert conditional([("If-Match", '"v2"')], self.STORED) == 412
        assert conditional([("If-Match", 'W/"v1"')], self.STORED) == 412  # strong comparison
        assert conditional([("If-Match", '"v1"')], [("ETag", 'W/"v1"')]) == 412

    def test_rfc9110_13_1_4_if_unmodified_since(self):
        assert conditional([("If-Unmodified-Since", LM)], self.STORED) is None
        assert conditional([("If-Unmodified-Since", EARLIER)], self.STORED) == 412
        assert conditional([("If-Unmodified-Since", "junk")], self.STORED) is None

    def test_rfc9110_13_1_4_ignored_with_if_match(self):
        assert conditional([("If-Match", '"v1"'), ("If-Unmodified-Since", EARLIER)], self.STORED) is None

    def test_rfc9110_13_2_2_if_match_before_if_none_match(self):
        assert conditional([("If-Match", '"v1"'), ("If-None-Match", '"v1"')], self.STORED) == 304

    def test_rfc9110_8_8_3_etags_with_commas(self):
        assert parse_etags(b'"a,b", W/"c" ,"d"') == [(False, b'"a,b"'), (True, b'"c"'), (False, b'"d"')]
        assert etag_matches(b'"x", "a,b"', b'"a,b"', strong=True)

    def test_rfc9110_8_8_3_2_comparison_table(self):
        # RFC 9110 8.8.3.2 example table
        assert not etag_matches(b'W/"1"', b'W/"1"', strong=True)
        assert etag_matches(b'W/"1"', b'W/"1"', strong=False)
        assert not etag_matches(b'W/"1"', b'W/"2"', strong=False)
        assert not etag_matches(b'W/"1"', b'"1"', strong=True)
        assert etag_matches(b'W/"1"', b'"1"', strong=False)
        assert etag_matches(b'"1"', b'"1"', strong=True)

    @given(st.binary(max_size=60))
    def test_etag_parser_never_raises(self, value):
        parse_etags(value)
        etag_matches(value, b'"x"', strong=False)

    def test_rfc9110_15_4_5_not_modified_headers(self):
        stored = hdrs(
            ("Date", LM),
            ("Content-Type", "text/html"),
            ("Content-Length", "10"),
            ("ETag", '"v1"'),
            ("cache-control", "max-age=60"),
            ("Expires", LATER),
            ("Vary", "Accept"),
            ("Content-Location", "/a"),
            ("Last-Modified", EARLIER),
            ("Set-Cookie", "a=b"),
        )
        assert [name for name, _ in not_modified_headers(*stored)] == [
            b"Date",
            b"ETag",
            b"cache-control",
            b"Expires",
            b"Vary",
            b"Content-Location",
            b"Last-Modified",
        ]


# -------------------------------------------------------------- revalidation


class TestRevalidation:
    def test_rfc9111_4_3_1_validators(self):
        assert validators(*hdrs(("ETag", '"v1"'), ("Last-Modified", LM))) == [
            (b"If-None-Match", b'"v1"'),
            (b"If-Modified-Since", LM.encode()),
        ]
        assert validators(*hdrs(("Content-Type", "x"))) == []

    def test_rfc9111_4_3_4_freshen(self):
        stored = hdrs(
            ("Date", EARLIER),
            ("Cache-Control", "max-age=60"),
            ("Content-Type", "text/html"),
            ("Content-Length", "10"),
            ("Content-Encoding", "gzip"),
            ("X-Multi", "1"),
            ("X-Multi", "2"),
            ("Age", "50"),
            ("ETag", '"v1"'),
        )
        new = hdrs(
            ("Date", LM),
            ("Cache-Control", "max-age=120"),
            ("Content-Length", "0"),
            ("Content-Encoding", "identity"),
            ("X-Multi", "3"),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("X-New", "n"),
            ("ETag", '"v1"'),
        )
        headers, lowered = freshen_headers(*stored, *new)
        assert lowered == [name.lower() for name, _ in headers]
        assert dict((name, value) for name, value in headers if name not in (b"X-Multi",)) == {
            b"Content-Type": b"text/html",
            b"Content-Length": b"10",
            b"Content-Encoding": b"gzip",
            b"Date": LM.encode(),
            b"Cache-Control": b"max-age=120",
            b"X-New": b"n",
            b"ETag": b'"v1"',
        }
        assert [value for name, value in headers if name == b"X-Multi"] == [b"3"]

    def test_rfc9110_6_6_1_304_without_date(self):
        stored = hdrs(("Date", EARLIER), ("Cache-Control", "max-age=60"))
        headers, lowered = freshen_headers(*stored, *hdrs(("ETag", '"x"')), response_time=NOW)
        assert (b"Date", http_date(NOW)) in headers
        headers, lowered = freshen_headers(*stored, *hdrs(("ETag", '"x"')))
        assert b"date" not in lowered

    def test_freshened_policy_is_fresh_again(self):
        stored = hdrs(("Date", date(-1000)), ("Cache-Control", "max-age=60"), ("ETag", '"v1"'))
        headers, lowered = freshen_headers(*stored, *hdrs(("Date", date()), ("ETag", '"v1"')))
        assert evaluate(stored_policy(200, headers, lowered, NOW, NOW), NO_DIRECTIVES, NOW)[0] == FRESH

    def test_rfc9111_4_3_4_which_stored_response(self):
        stored = hdrs(("ETag", '"v1"'), ("Last-Modified", LM))
        assert revalidation_matches(*stored, *hdrs(("ETag", '"v1"')))
        assert not revalidation_matches(*stored, *hdrs(("ETag", '"v2"')))
        assert not revalidation_matches(*stored, *hdrs(("ETag", 'W/"v1"')))
        assert revalidation_matches(*stored, *hdrs(("Last-Modified", LM)))
        assert not revalidation_matches(*stored, *hdrs(("Last-Modified", LATER)))
        assert revalidation_matches(*stored, *hdrs(("Cache-Control", "max-age=5")))
        assert not revalidation_matches(*hdrs(("Last-Modified", LM)), *hdrs(("ETag", '"v1"')))

    def test_rfc9111_3_1_storage_drops_hop_by_hop(self):
        headers, lowered = storage_headers(
            *hdrs(("Connection", "X-A"), ("X-A", "1"), ("Transfer-Encoding", "chunked"), ("ETag", '"1"'))
        )
        assert headers == [(b"ETag", b'"1"')] and lowered == [b"etag"]


# -------------------------------------------------------------------- ranges


class TestRanges:
    @pytest.mark.parametrize(
        "value,expected",
        [
            (b"bytes=0-499", [(0, 499)]),
            (b"bytes=500-999", [(500, 999)]),
            (b"bytes=9500-", [(9500, 9999)]),
            (b"bytes=-500", [(9500, 9999)]),
            (b"bytes=-20000", [(0, 9999)]),
            (b"bytes=9000-20000", [(9000, 9999)]),
            (b"BYTES = 0-0", [(0, 0)]),
            (b"bytes=0-0,-1", [(0, 0), (9999, 9999)]),
            (b"bytes=500-600,0-100", [(500, 600), (0, 100)]),  # order kept
            (b"bytes=500-600,601-999", [(500, 999)]),  # adjacent coalesced
            (b"bytes=500-700,601-999,0-10", [(0, 10), (500, 999)]),
            (b"bytes=0-10, ,20-30,", [(0, 10), (20, 30)]),
            (b"bytes=0-10,99999-", [(0, 10)]),
        ],
    )
    def test_rfc9110_14_1_2_byte_ranges(self, value, expected):
        assert parse_range(value, 10000) == expected

    @pytest.mark.parametrize("value", [b"bytes=10000-", b"bytes=20000-30000", b"bytes=-0", b"bytes=10000-,-0"])
    def test_rfc9110_14_1_1_unsatisfiable(self, value):
        assert parse_range(value, 10000) is UNSATISFIABLE

    @pytest.mark.parametrize(
        "value",
        [b"items=0-5", b"bytes", b"bytes=", b"bytes=5", b"bytes=a-b", b"bytes=5-1", b"bytes=-", b"bytes=1-2-3", b"bytes=+1-2"],
    )
    def test_rfc9110_14_2_invalid_ignored(self, value):
        assert parse_range(value, 10000) is None

    def test_empty_representation_ignores_range(self):
        assert parse_range(b"bytes=0-", 0) is None

    def test_rfc9110_14_2_many_ranges_ignored(self):
        value = b"bytes=" + b",".join(b"%d-%d" % (i * 10, i * 10 + 1) for i in range(17))
        assert parse_range(value, 10000) is None

    @given(
        st.integers(1, 5000),
        st.lists(
            st.one_of(
                st.tuples(st.integers(0, 6000), st.one_of(st.none(), st.integers(0, 6000))).filter(
                    lambda r: r[1] is None or r[1] >= r[0]
                ),
                st.integers(0, 6000).map(lambda n: (None, n)),
            ),
            min_size=1,
            max_size=8,
        ),
    )
    def test_covers_exactly_the_requested_bytes(self, length, specs):
        text = b"bytes=" + b",".join(
            (b"-%d" % last) if first is None else (b"%d-" % first + (b"" if last is None else b"%d" % last))
            for first, last in specs
        )
        wanted = set()
        for first, last in specs:
            if first is None:
                wanted.update(range(max(0, length - last), length) if last else ())
            elif first < length:
                wanted.update(range(first, min(length - 1, length - 1 if last is None else last) + 1))
        result = parse_range(text, length)
        if not wanted:
            assert result is UNSATISFIABLE
            return
        got = set()
        for first, last in result:
            assert 0 <= first <= last < length
            assert not got & set(range(first, last + 1))  # no overlap after coalescing
            got.update(range(first, last + 1))
        assert got == wanted

    def test_rfc9110_14_4_content_range(self):
        assert content_range(0, 499, 1234) == b"bytes 0-499/1234"
        assert unsatisfied_range(1234) == b"bytes */1234"

    def test_rfc9110_13_1_5_if_range_etag_strong_only(self):
        assert if_range_matches(b'"v1"', b'"v1"', None)
        assert not if_range_matches(b'"v1"', b'W/"v1"', None)
        assert not if_range_matches(b'W/"v1"', b'W/"v1"', None)
        assert not if_range_matches(b'"v2"', b'"v1"', None)

    def test_rfc9110_13_1_5_if_range_date_must_be_strong(self):
        lm = LM.encode()
        assert if_range_matches(lm, None, lm, LATER.encode())
        assert not if_range_matches(lm, None, lm, None)  # no Date: weak
        assert not if_range_matches(lm, None, lm, http_date(parse_http_date(lm) + 30))  # < 60 s: weak
        assert not if_range_matches(EARLIER.encode(), None, lm, LATER.encode())

    def test_rfc9110_13_2_2_range_request(self):
        stored = hdrs(("ETag", '"v1"'), ("Date", LATER), ("Last-Modified", LM))
        ask = lambda *request, method=b"GET", status=200: range_request(  # noqa: E731
            method, *hdrs(*request), *stored, 1000, status
        )
        assert ask(("Range", "bytes=0-9")) == [(0, 9)]
        assert ask(("Range", "bytes=0-9"), ("If-Range", '"v1"')) == [(0, 9)]
        assert ask(("Range", "bytes=0-9"), ("If-Range", '"v0"')) is None
        assert ask(("Range", "bytes=0-9"), ("If-Range", LM)) == [(0, 9)]
        assert ask(("Range", "bytes=0-9"), method=b"HEAD") is None
        assert ask(("Range", "bytes=0-9"), status=404) is None
        assert ask(("Range", "bytes=0-9"), ("Range", "bytes=5-6")) is None
        assert ask(("If-Range", '"v1"')) is None
        assert ask(("Range", "bytes=5000-")) is UNSATISFIABLE

    def test_rfc9110_14_6_multipart_byteranges(self):
        body = bytes(range(256)) * 4
        ranges = parse_range(b"bytes=0-9,100-109", len(body))
        content_type, parts, closing, length = multipart_byteranges(ranges, len(body), b"text/plain", b"SEP")
        assert content_type == b"multipart/byteranges; boundary=SEP"
        built = b"".join(head + body[first : last + 1] for head, first, last in parts) + closing
        assert len(built) == length
        assert built == (
            b"\r\n--SEP\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-9/1024\r\n\r\n"
            + body[0:10]
            + b"\r\n--SEP\r\nContent-Type: text/plain\r\nContent-Range: bytes 100-109/1024\r\n\r\n"
            + body[100:110]
            + b"\r\n--SEP--\r\n"
        )
        assert b"Content-Type" not in multipart_byteranges(ranges, len(body), None, b"SEP")[1][0][0]


# -------------------------------------------------------------- invalidation


class TestInvalidation:
    @pytest.mark.parametrize(
        "method,status,expected",
        [
            (b"POST", 200, True),
            (b"PUT", 204, True),
            (b"DELETE", 302, True),
            (b"PATCH", 404, False),
            (b"POST", 500, False),
            (b"FOO", 200, True),  # unknown methods are unsafe
            (b"GET", 200, False),
            (b"HEAD", 200, False),
            (b"OPTIONS", 200, False),
        ],
    )
    def test_rfc9111_4_4_invalidates(self, method, status, expected):
        assert invalidates(method, status) is expected

    def targets(self, *response, host=b"example.com", scheme=b"http", target=b"/a/b?x=1"):
        return invalidation_targets(host, scheme, *hdrs(*response), target)

    def test_rfc9111_4_4_location_and_content_location(self):
        assert self.targets(("Location", "/new"), ("Content-Location", "c?y=2")) == [b"/new", b"/a/c?y=2"]

    def test_resolved_against_request_uri(self):
        assert self.targets(("Location", "../up/./x#frag")) == [b"/up/x"]

    def test_rfc9111_4_4_only_same_origin(self):
        assert self.targets(("Location", "http://EXAMPLE.com:80/same")) == [b"/same"]
        assert self.targets(("Location", "http://other.com/x")) == []
        assert self.targets(("Location", "https://example.com/x")) == []
        assert self.targets(("Location", "http://example.com:8080/x")) == []
        assert self.targets(("Location", "//other.com/x")) == []
        assert self.targets(("Location", "https://example.com/x"), host=b"example.com:443", scheme=b"https") == [
            b"/x"
        ]

    def test_junk_ignored(self):
        assert self.targets(("Location", "http://[::1/x")) == []
        assert self.targets(("Location", "")) == []
        assert self.targets(("Location", "/x"), ("Content-Location", "/x")) == [b"/x"]


# ------------------------------------------------------------- Cache-Status


class TestCacheStatus:
    @pytest.mark.parametrize(
        "kwargs,expected",
        [
            (dict(hit=True, ttl=3412.9), b"speedproxy; hit; ttl=3412"),
            (dict(hit=True, ttl=-0.5), b"speedproxy; hit; ttl=-1"),
            (dict(hit=True), b"speedproxy; hit"),
            (dict(hit=False, fwd="miss", stored=True), b"speedproxy; fwd=miss; stored"),
            (dict(hit=False, fwd="stale", fwd_status=304, ttl=100), b"speedproxy; fwd=stale; fwd-status=304; ttl=100"),
            (dict(hit=False, fwd=b"uri-miss", collapsed=True), b"speedproxy; fwd=uri-miss; collapsed"),
            (dict(hit=True, detail="stale-if-error"), b"speedproxy; hit; detail=stale-if-error"),
            (dict(hit=False, fwd="bypass", detail="no store"), b'speedproxy; fwd=bypass; detail="no store"'),
            (dict(hit=False, fwd="miss", detail='a"b\\'), b'speedproxy; fwd=miss; detail="a\\"b\\\\"'),
            (dict(hit=True, name=b"edge-1", key=b"/x y"), b'edge-1; hit; key="/x y"'),
            (dict(hit=True, name=b"my cache"), b'"my cache"; hit'),
        ],
    )
    def test_rfc9211_2(self, kwargs, expected):
        assert cache_status(**kwargs) == expected

    def test_rfc9111_5_1_age_header(self):
        assert age_header(0) == b"0"
        assert age_header(-5) == b"0"
        assert age_header(12.9) == b"12"
        assert age_header(2**40) == b"2147483648"


# ---------------------------------------------------------------- cache key


class TestCacheKey:
    def test_host_lowered_default_port_dropped(self):
        assert cache_key(b"Example.COM:80", b"/a", b"") == b"http://example.com/a"
        assert cache_key(b"example.com:443", b"/a", b"", scheme=b"https") == b"https://example.com/a"
        assert cache_key(b"example.com:80", b"/a", b"", scheme=b"https") == b"https://example.com:80/a"
        assert cache_key(b"example.com:8080", b"/a", b"") == b"http://example.com:8080/a"
        assert cache_key(b"example.com.", b"/a", b"") == b"http://example.com/a"

    def test_scheme_is_part_of_the_key(self):
        assert cache_key(b"h", b"/", b"") != cache_key(b"h", b"/", b"", scheme=b"https")

    def test_query_sorted_by_name_stable(self):
        assert cache_key(b"h", b"/p", b"?b=2&a=1&b=1&&") == b"http://h/p?a=1&b=2&b=1"
        assert cache_key(b"h", b"/p", b"b=2&a=1") == cache_key(b"h", b"/p", b"?a=1&b=2")
        assert cache_key(b"h", b"/p", b"?") == b"http://h/p"

    def test_ignore_and_modes(self):
        query = b"?utm_source=x&id=5&page=2"
        assert cache_key(b"h", b"/p", query, ignore_query=[b"utm_source"]) == b"http://h/p?id=5&page=2"
        assert cache_key(b"h", b"/p", query, ignore_query=frozenset({b"utm_source", b"page"})) == b"http://h/p?id=5"
        assert cache_key(b"h", b"/p", query, query_mode="none") == b"http://h/p"
        assert cache_key(b"h", b"/p", query, query_mode=["page", b"id"]) == b"http://h/p?id=5&page=2"
        assert cache_key(b"h", b"/p", b"?utm_source=x", ignore_query=["utm_source"]) == b"http://h/p"
        with pytest.raises(ValueError):
            cache_key(b"h", b"/p", query, query_mode="some")

    def test_header_names(self):
        request = hdrs(("Accept-Encoding", "GZIP,  br"))
        key = cache_key(b"h", b"/", b"", header_names=["Accept-Encoding"], request_headers=request[0], lowered=request[1])
        assert key == b"http://h/\naccept-encoding=gzip, br"

    @given(
        st.lists(
            st.tuples(st.from_regex(rb"[a-z]{1,5}", fullmatch=True), st.from_regex(rb"[a-z0-9]{0,5}", fullmatch=True)),
            max_size=6,
            unique_by=lambda pair: pair[0],
        ),
        st.randoms(),
    )
    def test_order_of_distinct_parameters_does_not_matter(self, params, rnd):
        shuffled = list(params)
        rnd.shuffle(shuffled)
        as_query = lambda items: b"&".join(name + b"=" + value for name, value in items)  # noqa: E731
        assert cache_key(b"h", b"/", as_query(params)) == cache_key(b"h", b"/", as_query(shuffled))


# -------------------------------------------------------------- performance


def test_hit_path_is_cheap():
    """The policy work of a hit (directives, freshness, Vary, conditionals, Age, Cache-Status) is cheap."""
    response = hdrs(
        ("Date", date(-10)),
        ("Cache-Control", "public, max-age=3600"),
        ("ETag", '"abc"'),
        ("Content-Type", "text/html"),
        ("Vary", "Accept-Encoding"),
    )
    request = hdrs(("Host", "example.com"), ("Accept", "*/*"), ("Accept-Encoding", "gzip, br"))
    stored = stored_policy(200, *response, NOW - 11, NOW - 10)
    names = vary_names(*response)

    def hit() -> None:
        outcome, ttl = evaluate(stored, request_directives(*request), NOW)
        variant_key(names, *request)
        evaluate_conditionals(b"GET", *request, *response)
        range_request(b"GET", *request, *response, 1000)
        age_header(current_age(stored.initial_age, stored.response_time, NOW))
        cache_status(True, ttl=ttl)

    runs = 2000
    best = min(timeit.repeat(hit, number=runs, repeat=3)) / runs
    assert best < 50e-6  # about 2-4 us on CPython; the bound leaves room for slow CI machines
