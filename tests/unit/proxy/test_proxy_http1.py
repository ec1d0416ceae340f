"""Tests for :mod:`speedproxy.proxy.http1`."""

from __future__ import annotations

from typing import List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speedproxy.proxy.http1 import (
    LAST_CHUNK,
    MAX_HEADER_COUNT,
    ChunkedDecoder,
    ProtocolError,
    RequestHead,
    check_partial_head,
    encode_chunk,
    parse_request_head,
    parse_response_head,
)


def req(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("latin-1")


def refused(head: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request_head(head)
    return info.value


def refused_response(head: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_response_head(head)
    return info.value


# -- request line ------------------------------------------------------------


def test_simple_get() -> None:
    head = req("GET /a/b?x=1 HTTP/1.1", "Host: example.com", "User-Agent: t")
    request = parse_request_head(head)
    assert isinstance(request, RequestHead)
    assert request.method == b"GET"
    assert request.target == b"/a/b?x=1"
    assert request.version == b"HTTP/1.1"
    assert request.host == b"example.com"
    assert request.headers == [(b"Host", b"example.com"), (b"User-Agent", b"t")]
    assert request.content_length is None
    assert not request.chunked
    assert not request.has_body
    assert request.keep_alive
    assert not request.expect_continue
    assert request.upgrade is None
    assert request.request_id is None
    assert request.raw_size == len(head)
    assert request.header(b"user-agent") == b"t"
    assert request.header(b"missing") is None


@pytest.mark.parametrize(
    "line",
    [
        "GET / HTTP/1.1 extra",
        "GET /  HTTP/1.1",
        "GET  / HTTP/1.1",
        "GET /",
        "GET",
        "",
        " GET / HTTP/1.1",
        "GET\t/\tHTTP/1.1",
    ],
)
def test_malformed_request_line(line: str) -> None:
    error = refused(req(line, "Host: h"))
    assert (error.status, error.code) == (400, "bad_request")


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.0"])
def test_unsupported_version_is_505(version: str) -> None:
    error = refused(req("GET / " + version, "Host: h"))
    assert (error.status, error.code) == (505, "http_version_not_supported")


@pytest.mark.parametrize("version", ["http/1.1", "HTTP/1.10", "HTTP/1", "HTTPS/1.1", "HTTP/11", "1.1"])
def test_malformed_version_is_400(version: str) -> None:
    assert refused(req("GET / " + version, "Host: h")).status == 400


@pytest.mark.parametrize("method", ["GET", "POST", "PURGE", "M-SEARCH", "get", "X!#$%&'*+.^_`|~"])
def test_token_methods_accepted(method: str) -> None:
    assert parse_request_head(req(method + " / HTTP/1.1", "Host: h")).method == method.encode()


@pytest.mark.parametrize("method", ["G(ET", "GE:T", "G\"T", "G/T", "G\x00T", "GÉT"])
def test_non_token_methods_refused(method: str) -> None:
    assert refused(req(method + " / HTTP/1.1", "Host: h")).status == 400


@pytest.mark.parametrize("target", ["/", "*", "/a?b=c&d", "/%20"])
def test_targets_accepted(target: str) -> None:
    assert parse_request_head(req("OPTIONS " + target + " HTTP/1.1", "Host: h")).target == target.encode()


@pytest.mark.parametrize(
    "target,host,origin_form",
    [
        (b"http://other.example/x", b"other.example", b"/x"),
        (b"HTTP://Other.example:81/x?q=1", b"Other.example:81", b"/x?q=1"),
        (b"https://example.com", b"example.com", b"/"),
        (b"http://example.com?q", b"example.com", b"/?q"),
        (b"http://[::1]:8080/p", b"[::1]:8080", b"/p"),
    ],
)
def test_absolute_form_becomes_origin_form(target: bytes, host: bytes, origin_form: bytes) -> None:
    request = parse_request_head(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nX-A: 1")
    assert request.target == origin_form
    assert request.host == host
    # The authority replaces the Host field that is forwarded, in place.
    assert request.headers == [(b"Host", host), (b"X-A", b"1")]
    assert request.lowered == [b"host", b"x-a"]


def test_absolute_form_gives_http10_a_host() -> None:
    request = parse_request_head(b"GET http://a.example/ HTTP/1.0")
    assert (request.host, request.target) == (b"a.example", b"/")
    assert request.headers == [(b"Host", b"a.example")]


@pytest.mark.parametrize(
    "target,detail",
    [
        (b"ftp://example.com/x", "unsupported scheme"),
        (b"file:///etc/passwd", "unsupported scheme"),
        (b"http://user:pw@example.com/x", "userinfo"),
        (b"http://@example.com/x", "userinfo"),
        (b"http:///x", "invalid authority"),
        (b"example.com:443", "invalid request target"),
        (b"x", "invalid request target"),
    ],
)
def test_bad_targets_refused(target: bytes, detail: str) -> None:
    error = refused(b"GET " + target + b" HTTP/1.1\r\nHost: h")
    assert error.status == 400 and detail in error.detail


def test_connect_is_not_allowed() -> None:
    error = refused(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443")
    assert (error.status, error.code) == (405, "method_not_allowed")


def test_asterisk_only_for_options() -> None:
    assert refused(b"GET * HTTP/1.1\r\nHost: h").status == 400


def test_request_line_bound() -> None:
    line = b"GET /" + b"a" * 100 + b" HTTP/1.1"
    error = refused_line(line + b"\r\nHost: h", 64)
    assert (error.status, error.code) == (414, "uri_too_long")
    assert parse_request_head(line + b"\r\nHost: h", len(line)).path == b"/" + b"a" * 100


def refused_line(head: bytes, max_line: int) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_request_head(head, max_line)
    return info.value


@pytest.mark.parametrize(
    "data,status",
    [
        (b"GET /x\r\n", 400),  # HTTP/0.9
        (b"GET /x HTTP/1.1\nHost: h\n", 400),  # bare LF
        (b"GET /x HTTP/1.1\r\nHost: h\nX", 400),
        (b"GET /x HTTP/1.1\rHost", 400),  # bare CR
        (b"GET /x\x00", 400),
        (b"GET /x HTTP/1.1\r\nHost: a\x00b", 400),
        (b"GET /x HTTP/2.0\r\n", 505),
        (b"GET /x HTTP/1.1\r\nNoColon\r\n", 400),
        (b"GET /x HTTP/1.1\r\n folded\r\n", 400),
        (b"GET /" + b"a" * 300, 414),
    ],
)
def test_partial_heads_refused_early(data: bytes, status: int) -> None:
    with pytest.raises(ProtocolError) as info:
        check_partial_head(data, 256)
    assert info.value.status == status


@pytest.mark.parametrize(
    "data",
    [b"G", b"GET /x HT", b"GET /x HTTP/1.1\r", b"GET /x HTTP/1.1\r\nHost: h\r\nX-A: 1", b"GET /x HTTP/1.1\r\nHost: h\r\n\r"],
)
def test_partial_heads_that_may_still_be_valid_wait(data: bytes) -> None:
    check_partial_head(data, 256)


def test_partial_head_checked_incrementally() -> None:
    data = b"GET /x HTTP/1.1\r\nHost: h\r\nX-A"
    checked = check_partial_head(data, 256)
    assert data[:checked] == b"GET /x HTTP/1.1\r\nHost: h\r\n"
    data += b": 1\r\nBad Name: 2\r\n"
    with pytest.raises(ProtocolError, match="invalid header field name"):
        check_partial_head(data, 256, checked)
    # Each byte is looked at once more per call, not the whole head again.
    assert check_partial_head(b"GET /x HTTP/1.1\r\nHost: h\r\nX-B: 2\r", 256, checked) == checked
    assert check_partial_head(b"GET /x HTTP/1.1\r\nHost: h\r\nX-B: 2\r\n", 256, checked) == checked + 8


@pytest.mark.parametrize("method,kept", [(b"GET", True), (b"POST", False), (b"PUT", False)])
def test_upgrade_only_on_get(method: bytes, kept: bool) -> None:
    request = parse_request_head(
        method + b" /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket"
    )
    assert (request.upgrade == b"websocket") is kept


@pytest.mark.parametrize("target", [b"/a\x00b", b"/a\x7fb", b"/a\x1fb", b"/a\x0bb"])
def test_targets_with_controls_refused(target: bytes) -> None:
    assert refused(b"GET " + target + b" HTTP/1.1\r\nHost: h").status == 400


@pytest.mark.parametrize(
    "target,path",
    [
        (b"/", b"/"),
        (b"/a/b", b"/a/b"),
        (b"/a/b?q=1", b"/a/b"),
        (b"/?q", b"/"),
        (b"http://example.com/x/y?z", b"/x/y"),
        (b"http://example.com", b"/"),
        (b"http://example.com?q", b"/"),
        (b"https://example.com:8443/p", b"/p"),
        (b"*", b"*"),
    ],
)
def test_path_property(target: bytes, path: bytes) -> None:
    assert parse_request_head(b"OPTIONS " + target + b" HTTP/1.1\r\nHost: h").path == path


# -- header fields -----------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "Bad Name: x",
        "Bad(Name): x",
        "Name : x",
        ": novalue",
        "NoColon",
        "Näme: x",
        "Na\x00me: x",
    ],
)
def test_bad_header_names_refused(line: str) -> None:
    error = refused(req("GET / HTTP/1.1", "Host: h", line))
    assert (error.status, error.code) == (400, "bad_request")


@pytest.mark.parametrize("value", [b"a\x00b", b"a\x01b", b"a\x7fb", b"a\nb", b"a\rb", b"a\x1bb"])
def test_control_characters_in_values_refused(value: bytes) -> None:
    assert refused(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: " + value).status == 400


def test_values_with_htab_and_obs_text_accepted_and_trimmed() -> None:
    request = parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: \t a\tb \xe9 \t\r\nX-Empty:")
    assert request.headers[1:] == [(b"X-A", b"a\tb \xe9"), (b"X-Empty", b"")]


@pytest.mark.parametrize("fold", [" continued", "\tcontinued", " x: y"])
def test_obs_fold_refused(fold: str) -> None:
    error = refused(req("GET / HTTP/1.1", "Host: h", "X-A: a", fold))
    assert error.status == 400


def test_obs_fold_detail_mentions_folding() -> None:
    assert "fold" in refused(req("GET / HTTP/1.1", "Host: h", " x: y")).detail


def test_header_count_limit() -> None:
    fields = ["X-%d: v" % i for i in range(MAX_HEADER_COUNT - 1)]
    assert len(parse_request_head(req("GET / HTTP/1.1", "Host: h", *fields)).headers) == MAX_HEADER_COUNT
    error = refused(req("GET / HTTP/1.1", "Host: h", *fields, "X-Last: v"))
    assert (error.status, error.code) == (431, "request_header_fields_too_large")


# -- Host --------------------------------------------------------------------


def test_missing_host_on_11_refused() -> None:
    assert refused(req("GET / HTTP/1.1", "X-A: b")).status == 400


def test_missing_host_on_10_allowed() -> None:
    assert parse_request_head(req("GET / HTTP/1.0")).host == b""


@pytest.mark.parametrize("name", ["Host", "host", "HOST"])
def test_duplicate_host_refused(name: str) -> None:
    error = refused(req("GET / HTTP/1.1", "Host: a", name + ": a"))
    assert error.status == 400
    assert "Host" in error.detail


@pytest.mark.parametrize("value", ["", "a/b", "a b", "a\x01b"])
def test_invalid_host_refused(value: str) -> None:
    assert refused(req("GET / HTTP/1.1", "Host: " + value)).status == 400


@pytest.mark.parametrize("value", ["example.com", "example.com:8080", "[::1]:80", "10.0.0.1"])
def test_valid_hosts(value: str) -> None:
    assert parse_request_head(req("GET / HTTP/1.1", "host: " + value)).host == value.encode()


# -- Content-Length ------------------------------------------------------------


@pytest.mark.parametrize("value,length", [("0", 0), ("12", 12), ("007", 7), ("9" * 18, int("9" * 18))])
def test_content_length(value: str, length: int) -> None:
    request = parse_request_head(req("POST / HTTP/1.1", "Host: h", "Content-Length: " + value))
    assert request.content_length == length
    assert request.has_body == (length > 0)
    assert not request.chunked


@pytest.mark.parametrize("value", ["", "-1", "+1", "1.0", "0x10", "1 2", "1,1", "12a", "9" * 19, "1\xbd"])
def test_invalid_content_length_refused(value: str) -> None:
    error = refused(req("POST / HTTP/1.1", "Host: h", "Content-Length: " + value))
    assert (error.status, error.code) == (400, "bad_request")


@pytest.mark.parametrize("second", ["5", "6", "05"])
def test_duplicate_content_length_refused_even_if_equal(second: str) -> None:
    error = refused(req("POST / HTTP/1.1", "Host: h", "Content-Length: 5", "content-length: " + second))
    assert error.status == 400


# -- Transfer-Encoding ---------------------------------------------------------


@pytest.mark.parametrize("value", ["chunked", "Chunked", "CHUNKED"])
def test_chunked_request(value: str) -> None:
    request = parse_request_head(req("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: " + value))
    assert request.chunked
    assert request.has_body
    assert request.content_length is None


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("te", ["chunked", "gzip"])
def test_content_length_and_transfer_encoding_refused(order: int, te: str) -> None:
    fields = ["Content-Length: 3", "Transfer-Encoding: " + te]
    if order:
        fields.reverse()
    error = refused(req("POST / HTTP/1.1", "Host: h", *fields))
    assert (error.status, error.code) == (400, "bad_request")


@pytest.mark.parametrize("value", ["gzip", "gzip, chunked", "chunked, chunked", "identity", "chunked;q=1", ""])
def test_non_chunked_transfer_encoding_is_501(value: str) -> None:
    error = refused(req("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: " + value))
    assert (error.status, error.code) == (501, "not_implemented")


def test_duplicate_transfer_encoding_refused() -> None:
    error = refused(req("POST / HTTP/1.1", "Host: h", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked"))
    assert error.status == 400


def test_transfer_encoding_on_http10_refused() -> None:
    error = refused(req("POST / HTTP/1.0", "Host: h", "Transfer-Encoding: chunked"))
    assert error.status == 400


# -- Connection / keep-alive --------------------------------------------------------


@pytest.mark.parametrize(
    "version,connection,keep_alive",
    [
        ("HTTP/1.1", None, True),
        ("HTTP/1.1", "close", False),
        ("HTTP/1.1", "Close", False),
        ("HTTP/1.1", "keep-alive", True),
        ("HTTP/1.1", "foo, CLOSE", False),
        ("HTTP/1.0", None, False),
        ("HTTP/1.0", "keep-alive", True),
        ("HTTP/1.0", "Keep-Alive", True),
        ("HTTP/1.0", "close", False),
        ("HTTP/1.0", "x, keep-alive ,y", True),
    ],
)
def test_keep_alive_rules(version: str, connection: object, keep_alive: bool) -> None:
    lines = ["GET / " + version, "Host: h"]
    if connection is not None:
        lines.append("Connection: %s" % connection)
    assert parse_request_head(req(*lines)).keep_alive is keep_alive


def test_connection_tokens_from_several_headers() -> None:
    request = parse_request_head(req("GET / HTTP/1.1", "Host: h", "Connection: A, b", "connection: ,C,"))
    assert request.connection_tokens == (b"a", b"b", b"c")


# -- Expect ------------------------------------------------------------------


def test_expect_continue() -> None:
    request = parse_request_head(req("POST / HTTP/1.1", "Host: h", "Content-Length: 3", "Expect: 100-Continue"))
    assert request.expect_continue


def test_expect_continue_ignored_on_http10() -> None:
    request = parse_request_head(req("POST / HTTP/1.0", "Content-Length: 3", "Expect: 100-continue"))
    assert not request.expect_continue


@pytest.mark.parametrize("value", ["foo", "100-continue-x", "200-ok", ""])
def test_other_expectations_are_417(value: str) -> None:
    error = refused(req("POST / HTTP/1.1", "Host: h", "Expect: " + value))
    assert (error.status, error.code) == (417, "expectation_failed")


# -- Upgrade and request id -------------------------------------------------------


def test_upgrade_needs_connection_upgrade() -> None:
    with_token = parse_request_head(req("GET / HTTP/1.1", "Host: h", "Connection: Upgrade", "Upgrade: websocket"))
    assert with_token.upgrade == b"websocket"
    without = parse_request_head(req("GET / HTTP/1.1", "Host: h", "Upgrade: websocket"))
    assert without.upgrade is None


def test_request_id_is_passed_unvalidated() -> None:
    request = parse_request_head(req("GET / HTTP/1.1", "Host: h", "x-request-id: a b <c>"))
    assert request.request_id == b"a b <c>"


def test_long_unrelated_header_names_do_not_confuse_framing() -> None:
    request = parse_request_head(
        req("GET / HTTP/1.1", "Host: h", "Content-Length-Extra-Long: x", "Transfer-Encoding-X-Long: y")
    )
    assert request.content_length is None and not request.chunked


# -- responses -------------------------------------------------------------


def test_response_basic() -> None:
    response = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b")
    assert (response.version, response.status, response.reason) == (b"HTTP/1.1", 200, b"OK")
    assert response.content_length == 5
    assert not response.chunked
    assert response.keep_alive
    assert response.headers == [(b"Content-Length", b"5"), (b"X-A", b"b")]


def test_response_reason_optional_and_may_have_spaces() -> None:
    assert parse_response_head(b"HTTP/1.1 204").reason == b""
    assert parse_response_head(b"HTTP/1.1 404 Not Found Here").reason == b"Not Found Here"


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 abc OK",
        b"HTTP/2 200 OK",
        b"HTTP/1.2 200 OK",
        b"ICY 200 OK",
        b"",
        b"garbage",
        b"HTTP/1.1 200 OK\r\nBad Header: x",
        b"HTTP/1.1 200 OK\r\n folded: x",
        b"HTTP/1.1 200 OK\r\nX-A: a\x00b",
        b"HTTP/1.1 200 OK\r\n" + b"\r\n".join(b"X-%d: v" % i for i in range(MAX_HEADER_COUNT + 1)),
    ],
)
def test_malformed_responses_are_502(head: bytes) -> None:
    error = refused_response(head)
    assert (error.status, error.code) == (502, "bad_gateway")


@pytest.mark.parametrize(
    "fields",
    [
        [b"Content-Length: x"],
        [b"Content-Length: -1"],
        [b"Content-Length: 5", b"Content-Length: 6"],
        [b"Transfer-Encoding: gzip"],
        [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
        [b"Transfer-Encoding: gzip, chunked"],
    ],
)
def test_bad_response_framing_is_502(fields: List[bytes]) -> None:
    error = refused_response(b"\r\n".join([b"HTTP/1.1 200 OK"] + fields))
    assert error.status == 502


def test_equal_duplicate_content_length_in_response_accepted() -> None:
    response = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5")
    assert response.content_length == 5


def test_chunked_response_with_content_length_overrides_and_closes() -> None:
    response = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked")
    assert response.chunked
    assert response.content_length is None
    assert not response.keep_alive


def test_plain_chunked_response_keeps_the_connection_alive() -> None:
    response = parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked")
    assert response.chunked
    assert response.keep_alive


@pytest.mark.parametrize(
    "head,keep_alive",
    [
        (b"HTTP/1.1 200 OK", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close", False),
        (b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Close", False),
        (b"HTTP/1.0 200 OK", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive", True),
    ],
)
def test_response_keep_alive(head: bytes, keep_alive: bool) -> None:
    assert parse_response_head(head).keep_alive is keep_alive


# -- chunked decoding ----------------------------------------------------------


def decode_at_once(data: bytes) -> Tuple[bytes, bool, bytes]:
    decoder = ChunkedDecoder()
    body = b"".join(bytes(piece) for piece in decoder.feed(data))
    return body, decoder.done, decoder.leftover


def decode_in_pieces(data: bytes, cuts: List[int]) -> Tuple[bytes, bool, bytes]:
    """Feed ``data`` split at ``cuts``; stop feeding once the decoder is done."""
    decoder = ChunkedDecoder()
    bounds = [0] + sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]
    body = b""
    leftover = b""
    for start, end in zip(bounds, bounds[1:]):
        if decoder.done:
            leftover += data[start:end]
            continue
        body += b"".join(bytes(piece) for piece in decoder.feed(data[start:end]))
        if decoder.done:
            leftover += decoder.leftover
    return body, decoder.done, leftover


def encode(chunks: List[bytes], trailers: bytes = b"") -> bytes:
    return b"".join(encode_chunk(c) for c in chunks if c) + b"0\r\n" + trailers + b"\r\n"


def test_decode_simple() -> None:
    data = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT"
    assert decode_at_once(data) == (b"hello world", True, b"NEXT")


def test_decode_not_done_until_final_crlf() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"3\r\nabc\r\n0\r\n") == [b"abc"]
    assert not decoder.done
    assert decoder.feed(b"\r\n") == []
    assert decoder.done and decoder.leftover == b""


def test_decode_trailers_are_consumed() -> None:
    data = b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other:  two \r\n\r\nrest"
    assert decode_at_once(data) == (b"abc", True, b"rest")


def test_decode_uppercase_hex_and_leading_zeros() -> None:
    assert decode_at_once(b"0A\r\n0123456789\r\n000\r\n\r\n")[:2] == (b"0123456789", True)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"g\r\nabc\r\n", id="bad-hex"),
        pytest.param(b"-1\r\n", id="negative"),
        pytest.param(b"0x3\r\nabc\r\n", id="0x-prefix"),
        pytest.param(b" 3\r\nabc\r\n", id="leading-space"),
        pytest.param(b"3 \r\nabc\r\n", id="trailing-space"),
        pytest.param(b"\r\n", id="empty-size"),
        pytest.param(b"1" * 16 + b"\r\n", id="too-long-size"),
        pytest.param(b"3\r\nabcX\r\n0\r\n\r\n", id="data-longer-than-size"),
        pytest.param(b"3\r\nabc0\r\n\r\n", id="missing-crlf-after-data"),
        pytest.param(b"3\r\nabc\n0\r\n\r\n", id="bare-lf-after-data"),
        pytest.param(b"3\nabc\r\n0\r\n\r\n", id="bare-lf-after-size"),
        pytest.param(b"3\r\nabc\r\n0\n\r\n", id="bare-lf-last-chunk"),
        pytest.param(b"3\r\nabc\r\n0\r\n\n", id="bare-lf-end"),
        pytest.param(b"3\r\r\nabc\r\n", id="bare-cr-in-size"),
        pytest.param(b"3;a=\x01\r\nabc\r\n", id="control-in-extension"),
        pytest.param(b"3\r\nabc\r\n0\r\nBad Trailer: x\r\n\r\n", id="bad-trailer-name"),
        pytest.param(b"3\r\nabc\r\n0\r\nNoColon\r\n\r\n", id="trailer-without-colon"),
        pytest.param(b"3\r\nabc\r\n0\r\nX: a\x00b\r\n\r\n", id="trailer-control"),
        pytest.param(b"3\r\nabc\r\n0\r\n folded\r\n\r\n", id="trailer-fold"),
        pytest.param(b"1;" + b"e" * 5000 + b"\r\nx\r\n0\r\n\r\n", id="oversized-line"),
        pytest.param(b"1;" + b"e" * 5000, id="oversized-unterminated-line"),
    ],
)
def test_malformed_chunking_raises_at_once_and_bytewise(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        ChunkedDecoder().feed(data)
    assert info.value.status == 400
    decoder = ChunkedDecoder()
    with pytest.raises(ProtocolError):
        for index in range(len(data)):
            decoder.feed(data[index : index + 1])


def test_max_line_is_configurable() -> None:
    ChunkedDecoder(max_line=16).feed(b"1;" + b"e" * 12 + b"\r\n")  # 16 bytes with CRLF
    with pytest.raises(ProtocolError):
        ChunkedDecoder(max_line=16).feed(b"1;" + b"e" * 13 + b"\r\n")
    with pytest.raises(ProtocolError):
        ChunkedDecoder(max_line=16).feed(b"1;" + b"e" * 15)


chunk_lists = st.lists(st.binary(min_size=0, max_size=300), max_size=8)
trailer_blocks = st.sampled_from([b"", b"X-A: 1\r\n", b"X-A: 1\r\nX-B:\r\n"])


@settings(max_examples=150, deadline=None)
@given(
    chunks=chunk_lists,
    trailers=trailer_blocks,
    leftover=st.binary(max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=20),
)
def test_split_feeding_equals_one_shot(
    chunks: List[bytes], trailers: bytes, leftover: bytes, cuts: List[int]
) -> None:
    data = encode(chunks, trailers) + leftover
    expected = (b"".join(chunks), True, leftover)
    assert decode_at_once(data) == expected
    assert decode_in_pieces(data, cuts) == expected


@settings(max_examples=40, deadline=None)
@given(chunks=chunk_lists, trailers=trailer_blocks)
def test_byte_at_a_time_equals_one_shot(chunks: List[bytes], trailers: bytes) -> None:
    data = encode(chunks, trailers) + b"GET"
    assert decode_in_pieces(data, list(range(len(data)))) == decode_at_once(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=2000))
def test_encode_chunk_round_trip(data: bytes) -> None:
    assert decode_at_once(encode_chunk(data) + LAST_CHUNK) == (data, True, b"")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=400))
def test_truncated_or_corrupted_stream_never_yields_more_than_sent(data: bytes, cut: int) -> None:
    """Garbage never produces more body than the bytes fed, nor crashes."""
    decoder = ChunkedDecoder()
    try:
        body = b"".join(bytes(p) for p in decoder.feed(data[:cut]))
    except ProtocolError:
        return
    assert len(body) <= len(data[:cut])


def test_encode_chunk_format() -> None:
    assert encode_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_pathological_whitespace_is_refused_in_linear_time() -> None:
    """Long runs of OWS before a bad byte must not trigger regex backtracking."""
    import time

    heads = [
        b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: a\r\n" * 100 + b"Y: " + b"\t " * 30000 + b"\x00",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a" + b" " * 60000 + b"\x01b",
        b"GET / HTTP/1.1\r\nHost: h\r\nX:" + b" " * 60000 + b"\r\n Y: z",
    ]
    for head in heads:
        started = time.perf_counter()
        with pytest.raises(ProtocolError):
            parse_request_head(head)
        # generous: linear parsing of 64 KiB takes well under a millisecond
        assert time.perf_counter() - started < 0.5


def test_fast_and_line_by_line_parsers_agree() -> None:
    from speedproxy.proxy.http1 import _REQUEST_FIELDS, _parse_fields, _split_fields

    head = b"GET / HTTP/1.1\r\nHost: h  \r\nX-E:\r\nX-S: a b\t \r\nX-O: \xff\xfe\r\nAccept: text/event-stream"
    assert _split_fields(head, _REQUEST_FIELDS) == _parse_fields(head.split(b"\r\n"), _REQUEST_FIELDS)
