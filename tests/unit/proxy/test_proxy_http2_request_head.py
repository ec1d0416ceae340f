"""speedproxy.proxy.http2.request_head: the direct path for plain field lists
gives exactly what the HTTP/1.1 round trip gives (the same request, or the
same refusal), for generated field lists."""

from __future__ import annotations

from typing import Any, List, Tuple
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speedproxy.proxy import http2
from speedproxy.proxy.http1 import ProtocolError, RequestHead

_SLOTS = RequestHead.__slots__

PLAIN = [
    (b":method", b"GET"),
    (b":path", b"/1k?x=1"),
    (b":scheme", b"http"),
    (b":authority", b"127.0.0.1:8080"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]


def _outcome(headers: List[Tuple[bytes, bytes]], end_stream: bool, max_line: int) -> Any:
    try:
        request = http2.request_head(list(headers), end_stream, max_line)
    except ProtocolError as error:
        return ("refused", error.status, error.code, error.detail)
    return ("request",) + tuple((slot, getattr(request, slot)) for slot in _SLOTS)


def _via_http1(headers: List[Tuple[bytes, bytes]], end_stream: bool, max_line: int) -> Any:
    with mock.patch.object(http2, "_plain_request", lambda *args: None):
        return _outcome(headers, end_stream, max_line)


def test_plain_request_skips_the_http1_parser() -> None:
    with mock.patch.object(http2, "parse_request_head", side_effect=AssertionError("parsed")):
        request = http2.request_head(list(PLAIN), True, 8192)
    assert (request.method, request.path, request.query, request.host) == (b"GET", b"/1k", b"?x=1", b"127.0.0.1:8080")
    assert request.version == b"HTTP/2.0"
    assert request.lowered == [b"accept", b"accept-encoding", b"user-agent", b"host"]


def test_plain_request_is_the_http1_one() -> None:
    assert _outcome(PLAIN, True, 8192) == _via_http1(PLAIN, True, 8192)
    with_body = PLAIN + [
        (b"content-length", b"12"), (b"x-request-id", b"abc"), (b"x-request-id", b"def"),
        (b"traceparent", b"00-1-2-01"), (b"tracestate", b"a=1"), (b"tracestate", b"b=2"),
        (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"accept", b"text/event-stream"),
    ]
    first = _outcome(with_body, False, 0)
    assert first[0] == "request"
    assert first == _via_http1(with_body, False, 0)


@pytest.mark.parametrize(
    "extra",
    [
        [(b"content-length", b"1"), (b"content-length", b"1")],
        [(b"content-length", b"x")],
        [(b"expect", b"100-continue")],
        [(b"expect", b"nothing")],
        [(b"x-custom", b"a\x01b")],
        [(b"x-custom", b"a\x7fb")],
        [(b"cookie", b"a"), (b"cookie", b"")],
        [(b"x-%d" % index, b"v") for index in range(130)],
    ],
)
def test_unusual_fields_are_judged_alike(extra: List[Tuple[bytes, bytes]]) -> None:
    headers = PLAIN + extra
    assert _outcome(headers, True, 8192) == _via_http1(headers, True, 8192)


_METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"CONNECT", b"G@T", b"", b"get", b"GET "])
_PATHS = st.one_of(
    st.sampled_from([b"/", b"/1k", b"/a?b=c", b"*", b"", b"x", b"http://h/x", b"/a b", b"/\xc3\xa9",
                     b"/a\x7f", b"/a\tb", b"//x", b"/" + b"p" * 40, b"/a\x00"]),
    st.binary(max_size=12).map(lambda data: b"/" + data),
)
_AUTHORITIES = st.one_of(
    st.sampled_from([b"127.0.0.1:8080", b"example.com", b"", b"a b", b"a/b", b"u@h", b"h\xc3\xa9", b"h?",
                     b" h", b"h\x00"]),
    st.binary(max_size=8),
)
_NAMES = st.sampled_from([
    b"accept", b"accept-encoding", b"user-agent", b"cookie", b"content-length", b"x-request-id",
    b"traceparent", b"tracestate", b"host", b"expect", b"te", b"x-custom", b"Accept", b"bad name",
    b"connection", b"transfer-encoding", b"upgrade", b":path", b":unknown", b"",
])
_VALUES = st.one_of(
    st.sampled_from([b"", b"*/*", b"text/event-stream", b"12", b"012", b"-1", b"1" * 19, b"abc", b"trailers",
                     b"100-continue", b"a, b", b"a;b", b" a", b"a ", b"a\tb", b"a\r\nb", b"a\x00", b"\xff\xfe",
                     b"00-abc-def-01", b"k=v"]),
    st.binary(max_size=10),
)


@st.composite
def field_lists(draw: Any) -> Tuple[List[Tuple[bytes, bytes]], bool, int]:
    pseudo: List[Tuple[bytes, bytes]] = []
    for name, values in ((b":method", _METHODS), (b":path", _PATHS), (b":scheme", st.sampled_from([b"http", b"https"])),
                         (b":authority", _AUTHORITIES)):
        if draw(st.integers(0, 9)):  # mostly present
            pseudo.append((name, draw(values)))
    regular = draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=8))
    fields = pseudo + regular
    if draw(st.integers(0, 4)) == 0:
        fields = draw(st.permutations(fields))
    end_stream = draw(st.booleans())
    max_line = draw(st.sampled_from([0, 16, 30, 8192]))
    return list(fields), end_stream, max_line


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field_lists())
def test_direct_and_http1_paths_agree(case: Tuple[List[Tuple[bytes, bytes]], bool, int]) -> None:
    headers, end_stream, max_line = case
    assert _outcome(headers, end_stream, max_line) == _via_http1(headers, end_stream, max_line)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=6), st.booleans())
def test_plain_pseudo_headers_with_any_fields_agree(regular: List[Tuple[bytes, bytes]], end_stream: bool) -> None:
    headers = PLAIN[:4] + regular
    assert _outcome(headers, end_stream, 8192) == _via_http1(headers, end_stream, 8192)


# -- stream_request: request_head remembered ------------------------------------


def _slots(request: RequestHead) -> tuple:
    return tuple(getattr(request, slot) for slot in _SLOTS)


def test_a_remembered_request_is_a_fresh_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http2, "_MADE", {})
    first = http2.stream_request(list(PLAIN), True, 8192)
    first.headers.append((b"x-added", b"by a filter"))
    first.path = b"/changed"
    with mock.patch.object(http2, "request_head", side_effect=AssertionError("made again")):
        second = http2.stream_request(list(PLAIN), True, 8192)
        third = http2.stream_request(list(PLAIN), True, 8192)
    assert _slots(second) == _slots(http2.request_head(list(PLAIN), True, 8192))
    assert second is not third and second.headers is not third.headers and second.lowered is not third.lowered
    assert (b"x-added", b"by a filter") not in second.headers and second.path == b"/1k"
    http2.stream_request(list(PLAIN), False, 8192)  # another key: the end of the stream differs
    assert len(http2._MADE) == 2


def test_refusals_and_websockets_are_never_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http2, "_MADE", {})
    bad = PLAIN + [(b"expect", b"nothing")]
    for _ in range(2):
        with pytest.raises(ProtocolError):
            http2.stream_request(list(bad), True, 8192)
    websocket = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"),
                 (b":path", b"/chat"), (b":authority", b"h")]
    keys = {dict(http2.stream_request(list(websocket), False, 8192).headers)[b"sec-websocket-key"] for _ in range(2)}
    assert len(keys) == 2  # a new key each time
    assert http2._MADE == {}


def test_the_memory_is_bounded_and_skips_large_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http2, "_MADE", {})
    for index in range(http2._MADE_KEPT * 2):
        http2.stream_request(PLAIN[:1] + [(b":path", b"/%d" % index)] + PLAIN[2:], True, 8192)
        assert len(http2._MADE) <= http2._MADE_KEPT
    monkeypatch.setattr(http2, "_MADE", {})
    http2.stream_request(PLAIN + [(b"x-big", b"v" * 5000)], True, 8192)
    http2.stream_request(PLAIN + [(b"x-%d" % index, b"v") for index in range(40)], True, 8192)
    assert http2._MADE == {}
