"""The request side of the data path checked against h11, used as an oracle.

Issue 10: generated request heads go through speedproxy's parser, path
normalisation and forwarding (:func:`speedproxy_forward` runs them exactly
as ``ClientConnection._process_buffer``/``_start`` and
``Exchange.upstream_ready`` do) and through h11.  The properties:

* whatever speedproxy forwards, h11 parses, with the method, the target
  speedproxy meant (after normalisation), the client's end-to-end headers
  (same order, same values) plus the proxy's own, the Host speedproxy routed
  on, and the body framing speedproxy decided; h11 reads exactly that body;
* when both accept the client's head, they delimit the same head and derive
  the same framing from it;
* when h11 refuses the client's head, speedproxy does not accept it (bar
  leading empty lines, which RFC 9112 2.2 says to skip), and when
  speedproxy refuses a head h11 accepts, the refusal is one of the
  documented strictness rules of :data:`STRICTER` (speedproxy is stricter,
  never laxer, about framing and message syntax).

:func:`test_helper_is_what_the_proxy_sends` checks the helper against the
real client connection in memory.  Differences found with speedproxy
forwarding what it should not were fixed and are kept as tests at the end
(:data:`KNOWN_DIVERGENCES` lists any still open; :func:`obs_text_target`
marks targets that speedproxy percent-encodes where h11 refuses them).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from speedproxy.proxy.forwarding import sane_request_id, upstream_request_head
from speedproxy.proxy.http1 import ProtocolError, RequestHead, check_partial_head, parse_request_head
from speedproxy.proxy.paths import PathError, normalise_path
from speedproxy.tracing.context import valid_traceparent
from speedproxy.testing import InMemoryProxy

Headers = List[Tuple[bytes, bytes]]

PEER = "192.0.2.7"  # an untrusted client: X-Real-IP is its address
GENERATED_ID = b"generated-1"
#: Server defaults (speedproxy.config.model.ServerConfig).
MAX_REQUEST_LINE = 16 * 1024
MAX_HEADER_SIZE = 64 * 1024

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- speedproxy's side: the request data path, in memory ------------------------


@dataclass(frozen=True)
class Config:
    """The server settings that change what is forwarded."""

    merge_slashes: bool = False
    keep_escaped_slashes: bool = False  # server.escaped_slashes: keep
    forward_original_path: bool = False
    websocket_route: bool = True  # the route relays WebSocket upgrades (the default)
    max_header_size: int = MAX_HEADER_SIZE


@dataclass
class Forwarded:
    request: RequestHead
    #: The head written to the backend, final blank line included.
    head: bytes
    #: Bytes after the client's head (body, next request).
    rest: bytes


@dataclass(frozen=True)
class Refused:
    status: int
    detail: str
    #: "head" (ProtocolError), "path" (PathError) or "incomplete" (no blank line yet).
    kind: str


Outcome = Union[Forwarded, Refused]


def speedproxy_forward(
    raw: bytes,
    config: Config = Config(),
    new_request_id: Callable[[], bytes] = lambda: GENERATED_ID,
    trace: Optional[Tuple[bytes, bytes, bytes]] = None,
) -> Outcome:
    """What speedproxy sends a backend for the client bytes ``raw`` (first request).

    Mirrors ``ClientConnection._process_buffer`` and ``_start`` (head split,
    parse, path normalisation) and ``Exchange.__init__``/``start``/
    ``upstream_ready`` (WebSocket upgrade, framing, serialisation).
    Routing and body-size limits are not modelled: they refuse or pass a
    request whole and change nothing that is forwarded.
    """
    buffer = raw
    if buffer[:1] in (b"\r", b"\n"):
        buffer = buffer.lstrip(b"\r\n")
    end = buffer.find(b"\r\n\r\n")
    if end < 0 or end > config.max_header_size:
        try:
            check_partial_head(buffer[: config.max_header_size], MAX_REQUEST_LINE)
        except ProtocolError as error:
            return Refused(error.status, error.detail, "head")
        if len(buffer) > config.max_header_size or end > config.max_header_size:
            return Refused(431, "request head too large", "head")
        return Refused(0, "incomplete head", "incomplete")
    head = buffer[:end]
    try:
        request = parse_request_head(head, MAX_REQUEST_LINE)
        path = normalise_path(request.path, config.merge_slashes, config.keep_escaped_slashes)
    except ProtocolError as error:
        return Refused(error.status, error.detail, "head")
    except PathError as error:
        return Refused(400, str(error), "path")
    if path is not request.path:
        if not config.forward_original_path:
            request.target = path + request.query
        request.path = path
    request_id = sane_request_id(request.request_id) or new_request_id()
    upgrade = request.upgrade
    upgrade = upgrade if upgrade is not None and upgrade.lower() == b"websocket" else None
    if not config.websocket_route:
        upgrade = None
    if request.chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    elif request.content_length is not None:
        framing = b"Content-Length: %d\r\n" % request.content_length
    else:
        framing = b""
    forwarded = upstream_request_head(
        request.method,
        request.target,
        request.headers,
        request.connection_tokens,
        peer=PEER,
        client_ip=PEER,
        scheme=b"http",
        host=request.host,
        request_id=request_id,
        framing=framing,
        upgrade=upgrade,
        lowered=request.lowered,
        default_host=b"" if request.host else BACKEND_ADDRESS,
        trace=trace,
        drop_tracestate=not valid_traceparent(request.traceparent) and request.tracestate is not None,
    )
    return Forwarded(request, forwarded, buffer[end + 4 :])


def speedproxy_framing(request: RequestHead) -> Union[str, int]:
    return "chunked" if request.chunked else (request.content_length or 0)


# -- h11's side --------------------------------------------------------------------


@dataclass
class H11Reading:
    event: Optional[h11.Request]
    connection: h11.Connection
    error: Optional[h11.RemoteProtocolError]


def h11_read(data: bytes) -> H11Reading:
    """h11 (as a server) reading the first request head of ``data``."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError as error:
        return H11Reading(None, connection, error)
    assert isinstance(event, h11.Request), event
    return H11Reading(event, connection, None)


def h11_framing(event: h11.Request) -> Union[str, int]:
    """The request body framing h11 derives (h11._connection._body_framing).

    Transfer-Encoding (only ``chunked`` gets past h11) beats Content-Length
    (one value once h11 has validated it); a request with neither has no body.
    """
    lengths = []
    for name, value in event.headers:
        if name == b"transfer-encoding":
            return "chunked"
        if name == b"content-length":
            lengths.append(int(value))
    return lengths[0] if lengths else 0


def values(headers: Headers, lname: bytes) -> List[bytes]:
    return [value for name, value in headers if name.lower() == lname]


def h11_head_lines(data: bytes) -> List[bytes]:
    """The lines of the first head in ``data`` as h11 splits them (LF, optional CR)."""
    match = re.search(rb"\n\r?\n", data)
    head = data[: match.start()] if match else data
    return [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]


# -- what should be forwarded, derived from h11's reading of the client's head -------

#: RFC 9110 7.6.1 hop-by-hop fields, plus the non-standard ones proxies strip.
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
    b"proxy-authenticate",
}
#: Fields the proxy sets itself (it drops the client's).
REPLACED = {b"content-length", b"expect", b"x-real-ip", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id"}
#: Fields the proxy appends to (the client's values come first).
APPENDED = (b"x-forwarded-for", b"via")


def absolute_form(target: bytes) -> Optional[Tuple[bytes, bytes]]:
    """``(authority, origin-form)`` of an absolute-form target, ``None`` for other forms."""
    if target[:1] == b"/" or target == b"*":
        return None
    _, _, rest = target.partition(b"://")
    cut = min([rest.find(char) for char in (b"/", b"?", b"#") if char in rest] or [len(rest)])
    origin = rest[cut:]
    return rest[:cut], origin if origin[:1] == b"/" else b"/" + origin


@dataclass
class Expected:
    target: bytes
    host: bytes
    headers: Headers
    framing: Union[str, int]


def expected_forward(event: h11.Request, config: Config) -> Expected:
    """What a backend should receive for the client request h11 read as ``event``."""
    headers: Headers = event.headers.raw_items()
    target = event.target
    absolute = absolute_form(target)
    if absolute is not None:
        # RFC 9112 3.2.2: the target's authority is the host; Host is made to agree.
        authority, target = absolute
        for index, (name, _) in enumerate(headers):
            if name.lower() == b"host":
                headers[index] = (name, authority)
                break
        else:
            headers.append((b"Host", authority))
    if target != b"*" and not config.forward_original_path:
        path, mark, query = target.partition(b"?")
        target = normalise_path(path, config.merge_slashes, config.keep_escaped_slashes) + mark + query
    hosts = values(headers, b"host")
    host = hosts[0] if hosts else b""
    tokens = {
        token.strip().lower()
        for value in values(headers, b"connection")
        for token in value.split(b",")
        if token.strip()
    }
    drop = HOP_BY_HOP | REPLACED | (tokens - {b"host"})  # Connection cannot drop Host
    kept: Headers = []
    appended: Dict[bytes, List[bytes]] = {lname: [] for lname in APPENDED}
    for name, value in headers:
        lname = name.lower()
        if lname in drop:
            continue
        if lname in appended:
            appended[lname].append(value)
        else:
            kept.append((name, value))
    ids = values(headers, b"x-request-id")
    request_id = sane_request_id(ids[0] if ids else None) or GENERATED_ID
    framing = h11_framing(event)
    if not host:  # an HTTP/1.0 request without Host: given the backend's, first
        kept.insert(0, (b"Host", BACKEND_ADDRESS))
    own: Headers = [
        (b"X-Forwarded-For", b", ".join(appended[b"x-forwarded-for"] + [PEER.encode()])),
        (b"X-Real-IP", PEER.encode()),
        (b"X-Forwarded-Proto", b"http"),
        *([(b"X-Forwarded-Host", host)] if host else []),
        (b"Via", b", ".join(appended[b"via"] + [b"1.1 speedproxy"])),
        (b"X-Request-Id", request_id),
    ]
    if framing == "chunked":
        own.append((b"Transfer-Encoding", b"chunked"))
    elif values(headers, b"content-length"):
        own.append((b"Content-Length", b"%d" % framing))
    upgrades = values(headers, b"upgrade")
    if (
        config.websocket_route
        and event.method == b"GET"
        and b"upgrade" in tokens
        and upgrades
        and upgrades[-1].lower() == b"websocket"  # the last Upgrade field is the one kept
    ):
        own += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrades[-1])]
    return Expected(target, host, kept + own, framing)


SENTINEL = b"GET /next HTTP/1.1\r\nHost: next\r\n\r\n"


def assert_h11_reads_body(connection: h11.Connection, framing: Union[str, int]) -> None:
    """After the head, h11 reads exactly the body speedproxy frames, then stops."""
    if framing == "chunked":
        wire, body = b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\n", b"helloabc"
    elif framing > 4096:
        return  # too long to feed: the Content-Length field was compared already
    else:
        wire = body = b"b" * framing
    connection.receive_data(wire + SENTINEL)
    received = b""
    while True:
        event = connection.next_event()
        if isinstance(event, h11.Data):
            received += event.data
            continue
        assert isinstance(event, h11.EndOfMessage), event
        break
    assert received == body
    assert connection.trailing_data[0] == SENTINEL


# -- documented differences ---------------------------------------------------------

_BAD_HOST = re.compile(rb"[\x00-\x20\x7f/\\?#@]")
_CONTROL = re.compile(rb"[\x01-\x08\x0e-\x1f\x7f]")
_ABSOLUTE_OK = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f/\\?#@]+(?:[/?].*)?\Z", re.S)


@dataclass
class Seen:
    raw: bytes  # the client bytes, leading empty lines skipped
    event: h11.Request
    refusal: Refused

    @property
    def speedproxy_head(self) -> bytes:
        """The head as speedproxy delimits it, blank line included."""
        end = self.raw.find(b"\r\n\r\n")
        return self.raw if end < 0 else self.raw[: end + 4]

    @property
    def lines(self) -> List[bytes]:
        return h11_head_lines(self.raw)

    @property
    def fields(self) -> Headers:
        split = (line.partition(b":") for line in self.lines[1:])
        return [(name.lower(), value.strip(b" \t")) for name, _, value in split]


def _absolute_target_refused(seen: Seen) -> bool:
    target, method = seen.event.target, seen.event.method
    if target[:1] == b"/":
        return False
    if target == b"*":
        return method != b"OPTIONS"
    return method == b"CONNECT" or _ABSOLUTE_OK.match(target) is None


#: Heads h11 accepts and speedproxy refuses, each safe in that direction.
#: ``(name, predicate on what both saw, example head h11 accepts)``.
STRICTER: List[Tuple[str, Callable[[Seen], bool], bytes]] = [
    # h11 takes a bare LF as a line end (RFC 9112 2.2 MAY); other parsers
    # do not, and the same bytes then hold different fields or a different
    # head boundary: the classic smuggling lever, refused outright.
    (
        "bare LF line ending",
        lambda seen: re.search(rb"(?<!\r)\n", seen.speedproxy_head) is not None,
        b"GET / HTTP/1.1\nHost: h\r\n\r\n",
    ),
    # h11 unfolds obs-fold into a space; RFC 9112 5.2 lets a server reject it,
    # and a backend that does not unfold would see another field.
    (
        "obs-fold",
        lambda seen: any(line[:1] in (b" ", b"\t") for line in seen.lines[1:]),
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    ),
    # h11 lets CTLs other than NUL, CR, LF, VT, FF into field values
    # (RFC 9110 5.5 excludes them; backends truncate or split on them).
    (
        "control character in a field value",
        lambda seen: any(_CONTROL.search(value) for _, value in seen.event.headers),
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n",
    ),
    # h11 accepts "5, 5" and repeated equal Content-Length fields
    # (RFC 9112 6.3 lets a recipient reject them): one field, one number.
    (
        "repeated or list Content-Length",
        lambda seen: len(values(seen.fields, b"content-length")) > 1
        or any(b"," in value for value in values(seen.fields, b"content-length")),
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\nx",
    ),
    # h11 takes up to 20 digits; speedproxy 18 (no overflow anywhere).
    (
        "Content-Length over 18 digits",
        lambda seen: any(len(value) > 18 for value in values(seen.event.headers, b"content-length")),
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0000000000000000001\r\n\r\nx",
    ),
    # h11 lets Transfer-Encoding override Content-Length (RFC 9112 6.3 rule 3);
    # the pair is the CL.TE/TE.CL smuggling pattern and is refused.
    (
        "Content-Length with Transfer-Encoding",
        lambda seen: bool(values(seen.event.headers, b"content-length"))
        and bool(values(seen.event.headers, b"transfer-encoding")),
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    ),
    # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
    (
        "Transfer-Encoding in HTTP/1.0",
        lambda seen: seen.event.http_version == b"1.0" and bool(values(seen.event.headers, b"transfer-encoding")),
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ),
    # h11 accepts any HTTP/d.d; speedproxy answers 505 to all but 1.0 and 1.1.
    (
        "HTTP version other than 1.0 and 1.1",
        lambda seen: seen.event.http_version not in (b"1.0", b"1.1"),
        b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    ),
    # h11 does not look at the Host value; speedproxy routes on it, so it
    # must be a plain host[:port] (no userinfo, path, spaces or emptiness).
    (
        "Host value not a plain host[:port]",
        lambda seen: any(not value or _BAD_HOST.search(value) for value in values(seen.event.headers, b"host")),
        b"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n",
    ),
    # h11 takes any visible-ASCII target; speedproxy serves origin-form,
    # "*" for OPTIONS and http(s) absolute-form with a plain authority only
    # (no CONNECT tunnels, no other schemes, no userinfo: RFC 9110 4.2.4).
    ("target form", _absolute_target_refused, b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n"),
    # RFC 9110 10.1.1: 417 to an expectation the server does not meet.
    (
        "Expect other than 100-continue",
        lambda seen: any(value.lower() != b"100-continue" for value in values(seen.event.headers, b"expect")),
        b"GET / HTTP/1.1\r\nHost: h\r\nExpect: x\r\n\r\n",
    ),
    # One meaning per path (speedproxy.proxy.paths): dot segments above the
    # root, %00 and control escapes, malformed escapes and (by default)
    # encoded slashes and backslashes.  h11 leaves targets alone.
    ("path normalisation", lambda seen: seen.refusal.kind == "path", b"GET /a/%2f/b HTTP/1.1\r\nHost: h\r\n\r\n"),
]

#: speedproxy accepts and forwards, yet it should not: see the xfail tests below.
_OBS_TEXT_TARGET = re.compile(rb"\A[^ ]* [^ ]*[\x80-\xff]")


def obs_text_target(raw: bytes) -> bool:
    return _OBS_TEXT_TARGET.match(raw.split(b"\r\n", 1)[0]) is not None


#: (none left: each one found was fixed, and is kept as a test below)
KNOWN_DIVERGENCES: List[Tuple[str, Callable[[RequestHead], bool]]] = []

#: The Host an HTTP/1.0 request without one is given: the backend's address
#: (the in-memory proxy's backend, ``b1`` of speedproxy.testing.IN_MEMORY_CONFIG).
BACKEND_ADDRESS = b"10.1.0.1:8081"


def known_divergence(request: RequestHead) -> Optional[str]:
    for name, applies in KNOWN_DIVERGENCES:
        if applies(request):
            return name
    return None


# -- the property ---------------------------------------------------------------------


def check_against_h11(raw: bytes, config: Config = Config()) -> None:
    outcome = speedproxy_forward(raw, config)
    # Difference 0 (laxer, not framing): speedproxy skips CR/LF bytes before
    # the request line (RFC 9112 2.2 SHOULD ignore an empty line there) where
    # h11 says "no request line received".  Nothing of them is forwarded and
    # the head that follows is the same: check that, then give h11 the rest.
    stripped = raw.lstrip(b"\r\n")
    if stripped != raw:
        again = speedproxy_forward(stripped, config)
        if isinstance(outcome, Forwarded):
            assert isinstance(again, Forwarded) and again.head == outcome.head
        else:
            assert again == outcome
    original = h11_read(stripped)

    if isinstance(outcome, Refused):
        if original.event is not None:
            seen = Seen(stripped, original.event, outcome)
            reasons = [name for name, applies, _ in STRICTER if applies(seen)]
            assert reasons, "speedproxy refused (%s) a head h11 reads as %r: undocumented difference" % (
                outcome.detail,
                original.event,
            )
        return

    request = outcome.request
    if original.error is not None:
        # h11 refuses, speedproxy forwards: only the known divergence of
        # obs-text in the target, which speedproxy percent-encodes
        # (test_obs_text_in_the_target_is_percent_encoded), may do that.
        assert obs_text_target(stripped), "speedproxy accepted a head h11 refuses (%s): %r" % (original.error, raw)
        return
    event = original.event
    assert event is not None
    # Both accept: the same head boundary, method and framing.
    assert bytes(original.connection.trailing_data[0]) == outcome.rest
    assert event.method == request.method
    assert h11_framing(event) == speedproxy_framing(request)
    if known_divergence(request) is not None:
        return  # pinned by an xfail test below

    expected = expected_forward(event, config)
    forwarded = h11_read(outcome.head)
    assert forwarded.error is None, "h11 refuses what speedproxy forwards (%s): %r" % (
        forwarded.error,
        outcome.head,
    )
    assert forwarded.connection.trailing_data[0] == b""  # the head ends where h11 ends it
    parsed = forwarded.event
    assert parsed is not None
    assert parsed.method == request.method
    assert parsed.target == request.target == expected.target
    assert parsed.http_version == b"1.1"
    assert parsed.headers.raw_items() == expected.headers
    assert values(parsed.headers.raw_items(), b"host") == [request.host or BACKEND_ADDRESS]
    assert request.host == expected.host
    assert h11_framing(parsed) == speedproxy_framing(request) == expected.framing
    assert_h11_reads_body(forwarded.connection, expected.framing)


# -- generated heads ------------------------------------------------------------------

TCHAR = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits


def _b(text: str) -> bytes:
    return text.encode("latin-1")


tokens = st.text(TCHAR, min_size=1, max_size=8).map(_b)


GOOD_SEGMENTS = [b"", b"a", b"b.c", b".", b"..", b"...", b"%2e", b"%2E%2e", b".%2e", b"%41", b"%7e",
                 b"a;b=c", b"~u", b"%C3%a9", b"a:b", b"@", b"!$&'()*+,;=", b"%20"]
ODD_SEGMENTS = [b"%2F", b"%5C", b"%00", b"%0a", b"%7f", b"%zz", b"%4", b"%", b"\\", b"\xc3\xa9", b"a#b"]
queries = st.one_of(
    st.just(b""),
    st.lists(
        st.sampled_from([b"a=1", b"b", b"/../x", b"%2e", b"?", b"q=%00", b"&", b"c=d/e", b"%zz"]), max_size=3
    ).map(lambda parts: b"?" + b"&".join(parts)),
)


def origin_forms(segments: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda segs, q, f: b"/" + b"/".join(segs) + q + f,
        st.lists(segments, max_size=5),
        queries,
        st.sampled_from([b"", b"", b"", b"#f"]),
    )


def absolute_forms(
    schemes: List[bytes], userinfos: List[bytes], authorities: List[bytes]
) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda scheme, userinfo, authority, rest: scheme + b"://" + userinfo + authority + rest,
        st.sampled_from(schemes),
        st.sampled_from(userinfos),
        st.sampled_from(authorities),
        st.one_of(origin_forms(st.sampled_from(GOOD_SEGMENTS)), st.sampled_from([b"", b"?q", b"/"])),
    )


GOOD_AUTHORITIES = [b"example.com", b"h", b"h:8080", b"127.0.0.1:80", b"[::1]:8080", b"H"]
#: ``(usual, odd)`` strategies for each part of a head.  A generated head
#: takes the odd strategy for a few of its parts only (see
#: :func:`request_heads`), so that most heads are accepted and forwarded and
#: the forwarding properties get exercised, while the odd values (the ones
#: parsers disagree about) still show up in every part.
PARTS: Dict[str, Tuple[st.SearchStrategy, st.SearchStrategy]] = {
    "method": (
        st.sampled_from([b"GET", b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]),
        st.one_of(tokens, st.sampled_from([b"TRACE", b"CONNECT", b"get", b"GE(T", b"G@T", b"", b"GET/1"])),
    ),
    "target": (
        st.one_of(
            origin_forms(st.sampled_from(GOOD_SEGMENTS)),
            origin_forms(st.sampled_from(GOOD_SEGMENTS)),
            absolute_forms([b"http", b"https", b"HTTP", b"hTTps"], [b""], GOOD_AUTHORITIES),
        ),
        st.one_of(
            origin_forms(st.sampled_from(GOOD_SEGMENTS + ODD_SEGMENTS)),
            absolute_forms(
                [b"http", b"https", b"ws", b"ftp", b"h2c", b"", b"1http"],
                [b"", b"u@", b"u:p@", b"@"],
                GOOD_AUTHORITIES + [b"", b"h\\x", b"a%20b"],
            ),
            st.sampled_from(
                [b"*", b"h:443", b"example.com", b"http:/x", b"http://h#f", b"//x/y", b"", b"/a\x7fb"]
            ),
        ),
    ),
    "version": (
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]),
        st.sampled_from([b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/1", b"HTTP/1.2"]),
    ),
    "host count": (st.just(1), st.sampled_from([0, 2])),
    "host": (
        st.sampled_from([b"h", b"example.com", b"h:8080", b"[::1]:80", b"H", b"10.0.0.1"]),
        st.sampled_from([b"", b"a b", b"u@h", b"h/x", b"h\x80", b"h?", b"h\\", b"h\tx"]),
    ),
    "content-length": (
        st.sampled_from([b"0", b"5", b"5", b"12", b"005", b"0" * 17 + b"7", b"1" * 18]),
        st.sampled_from([b"+5", b"-5", b"5, 5", b"5,6", b"5 5", b"0x5", b"", b"5;", b"1" * 19, b"1" * 20,
                         b"1" * 21, b"9" * 25, b"0" * 19 + b"7", b"\xd9\xa5", b"1" * 20 + b", " + b"1" * 20]),
    ),
    "transfer-encoding": (
        st.sampled_from([b"chunked", b"chunked", b"Chunked", b"CHUNKED"]),
        st.sampled_from([b"gzip, chunked", b"chunked, gzip", b"chunked,", b",chunked", b"identity", b"",
                         b"chunked;q=1", b"xchunked", b"chunked chunked", b"gzip", b"chunked\x0b"]),
    ),
    "connection": (
        st.sampled_from([b"close", b"keep-alive", b"Upgrade", b"upgrade", b"x-custom", b"X-Forwarded-For", b"via",
                         b"cookie", b"te", b"content-length", b"transfer-encoding", b"x-request-id", b"accept",
                         b"x-real-ip", b"X-Custom", b""]),
        st.sampled_from([b"host", b"Host"]),
    ),
    "expect": (st.sampled_from([b"100-continue", b"100-Continue"]), st.sampled_from([b"200-ok", b""])),
}

LEADING_OWS = st.sampled_from([b" ", b" ", b" ", b"", b"\t", b"  ", b" \t"])
TRAILING_OWS = st.sampled_from([b"", b"", b"", b" ", b"\t", b"\t "])
GENERIC_VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F)) + " \t\x80\xe9\xff"
generic_values = st.text(GENERIC_VALUE_CHARS, max_size=12).map(_b)


def spellings(*names: bytes) -> st.SearchStrategy[bytes]:
    cases = st.sampled_from([bytes, bytes.lower, bytes.upper])
    return st.builds(lambda name, case: case(name), st.sampled_from(names), cases)


def fields(names: st.SearchStrategy[bytes], field_values: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda n, lead, v, trail: n + b":" + lead + v + trail, names, LEADING_OWS, field_values, TRAILING_OWS
    )


def connection_values(tokens: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda parts, sep: sep.join(parts),
        st.lists(tokens, min_size=1, max_size=3),
        st.sampled_from([b",", b", ", b" , "]),
    )


#: The header lines of a head: ``(usual, odd)`` strategies per kind (the
#: same strategy twice for kinds without odd values).  Built once: building
#: strategies while drawing costs more than running the checks.
FIELD_KINDS: List[Tuple[st.SearchStrategy[bytes], st.SearchStrategy[bytes]]] = [
    tuple(fields(spellings(b"Content-Length"), strategy) for strategy in PARTS["content-length"]),
    tuple(fields(spellings(b"Transfer-Encoding"), strategy) for strategy in PARTS["transfer-encoding"]),
    tuple(fields(spellings(b"Expect"), strategy) for strategy in PARTS["expect"]),
] * 2 + [
    (
        fields(spellings(b"Connection"), connection_values(PARTS["connection"][0])),
        fields(spellings(b"Connection"), connection_values(st.one_of(PARTS["connection"]))),
    )
] * 2 + [
    (strategy, strategy)
    for strategy in [
        fields(
            spellings(b"Upgrade"), st.sampled_from([b"websocket", b"WebSocket", b"h2c", b"websocket, h2c", b""])
        ),
        st.sampled_from(  # a WebSocket handshake
            [b"Connection: Upgrade\r\nUpgrade: websocket", b"Upgrade: WebSocket\r\nconnection: upgrade"]
        ),
        fields(
            spellings(b"Keep-Alive", b"Proxy-Connection", b"TE", b"Trailer", b"Proxy-Authorization",
                      b"Proxy-Authenticate"),
            generic_values,
        ),
        fields(spellings(b"X-Forwarded-For"), st.sampled_from([b"1.2.3.4", b"1.2.3.4, 5.6.7.8", b"garbage", b""])),
        fields(spellings(b"Via"), st.sampled_from([b"1.0 fred", b"1.1 p", b""])),
        fields(spellings(b"X-Real-IP", b"X-Forwarded-Proto", b"X-Forwarded-Host"), generic_values),
        fields(spellings(b"X-Request-Id"), st.sampled_from([b"abc-123", b"bad id!", b"x" * 130, b""])),
    ]
] + [
    (strategy, strategy)
    for strategy in [
        fields(st.one_of(spellings(b"Accept", b"Cookie", b"X-Custom", b"User-Agent", b"Content-Type"), tokens),
               generic_values)
    ]
] * 6
#: Which part of PARTS makes each field kind odd.
_FIELD_PART = ["content-length", "transfer-encoding", "expect"] * 2 + ["connection", "connection"]
HOST_FIELDS = tuple(fields(spellings(b"Host"), strategy) for strategy in PARTS["host"])


@st.composite
def request_heads(draw: Callable, max_odd: int = 2) -> bytes:
    """A request head without its final blank line; up to ``max_odd`` of its parts odd."""
    odd = set(draw(st.lists(st.sampled_from(sorted(PARTS)), max_size=max_odd, unique=True)))

    def part(name: str) -> bytes:
        return draw(PARTS[name][name in odd])

    line = part("method") + b" " + part("target") + b" " + part("version")
    host_field = HOST_FIELDS["host" in odd]
    lines = [draw(host_field) for _ in range(part("host count"))]
    for kind in draw(st.lists(st.integers(0, len(FIELD_KINDS) - 1), max_size=8)):
        odd_kind = kind < len(_FIELD_PART) and _FIELD_PART[kind] in odd
        lines.append(draw(FIELD_KINDS[kind][odd_kind]))
    lines = draw(st.permutations(lines))
    return b"\r\n".join([line] + lines)


INSERTS = [
    b"\x00", b"\t", b"\x01", b"\x7f", b"\x0b", b"\x0c", b"\x80", b"\xff", b" ", b":", b"\r", b"\n", b"\r\n", b",",
    b"\r\n ", b"\r\n\t", b"\r\nContent-Length: 3",
]
CRLF_REPLACEMENTS = [b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n ", b"\r\n\t", b"\r\n\r\n", b"\r\n\n", b" \r\n"]


def _insert(draw: Callable, head: bytes) -> bytes:
    at = draw(st.integers(0, len(head)))
    return head[:at] + draw(st.sampled_from(INSERTS)) + head[at:]


def _replace(pattern: bytes, replacements: List[bytes]) -> Callable[[Callable, bytes], bytes]:
    def mutate(draw: Callable, head: bytes) -> bytes:
        places = [match.start() for match in re.finditer(re.escape(pattern), head)]
        if not places:
            return head
        at = draw(st.sampled_from(places))
        return head[:at] + draw(st.sampled_from(replacements)) + head[at + len(pattern) :]

    return mutate


def _delete(draw: Callable, head: bytes) -> bytes:
    if not head:
        return head
    at = draw(st.integers(0, len(head) - 1))
    return head[:at] + head[at + 1 :]


MUTATIONS = [
    _insert,
    _insert,
    _replace(b"\r\n", CRLF_REPLACEMENTS),
    _replace(b"\r\n", CRLF_REPLACEMENTS),
    _replace(b":", [b" :", b"\t:", b"::", b"", b": "]),
    _replace(b" ", [b"  ", b"\t", b"", b"\x0b"]),
    _delete,
]


@st.composite
def mutated_requests(draw: Callable) -> bytes:
    """Client bytes: a head with raw byte mutations, the blank line, maybe a prefix."""
    head = draw(request_heads(max_odd=0))  # the mutations are the oddity
    for _ in range(draw(st.integers(1, 2))):
        head = draw(st.sampled_from(MUTATIONS))(draw, head)
    prefix = draw(st.sampled_from([b""] * 6 + [b"\r\n", b"\n", b"\r\n\r\n", b"\r"]))
    return prefix + head + b"\r\n\r\n"


configs = st.builds(
    Config,
    merge_slashes=st.booleans(),
    keep_escaped_slashes=st.booleans(),
    forward_original_path=st.booleans(),
    websocket_route=st.booleans(),
)


@SETTINGS
@given(head=request_heads(), config=configs)
def test_generated_heads_against_h11(head: bytes, config: Config) -> None:
    check_against_h11(head + b"\r\n\r\n", config)


@SETTINGS
@given(raw=mutated_requests())
def test_mutated_heads_against_h11(raw: bytes) -> None:
    check_against_h11(raw)


@settings(SETTINGS, max_examples=200)
@given(head=request_heads(), body=st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", SENTINEL]))
def test_head_boundary_and_rest_agree(head: bytes, body: bytes) -> None:
    """Bytes after the head (a body, a pipelined request) are left alone by both."""
    check_against_h11(head + b"\r\n\r\n" + body)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(request_heads(max_odd=1).map(lambda head: head + b"\r\n\r\n"), mutated_requests()))
@example(raw=b"GET / HTTP/1.0\r\n\r\nHost: h\r\n\r\n")  # hostless HTTP/1.0: the backend's address
def test_helper_is_what_the_proxy_sends(raw: bytes) -> None:
    """:func:`speedproxy_forward` agrees with the real client connection (in memory)."""
    proxy = InMemoryProxy()  # default settings, one route, WebSocket relayed
    client = proxy.client(PEER)
    client.send(raw)
    if not proxy.connects:
        outcome = speedproxy_forward(raw, Config(max_header_size=proxy.core.server.max_header_size))
        if isinstance(outcome, Forwarded) and outcome.request.chunked and outcome.rest:
            # Body bytes that came with the head are checked before a backend
            # is picked: here the pipelined bytes are no chunk.
            assert client.response().status == 400
        elif isinstance(outcome, Forwarded):
            # Not routed: only an asterisk-form target misses the "/" route.
            assert outcome.request.path[:1] != b"/"
            assert client.response().status == 404
        elif outcome.kind == "incomplete":
            assert client.received() == b""
        else:
            assert client.response().status == outcome.status
        return
    sent = proxy.accept().received()
    own_id = re.findall(rb"\r\nX-Request-Id: ([^\r]*)\r\n", sent)[-1]
    own_trace = tuple(re.findall(rb"\r\ntraceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\r\n", sent)[-1])
    outcome = speedproxy_forward(
        raw, Config(max_header_size=proxy.core.server.max_header_size), lambda: own_id, own_trace
    )
    assert isinstance(outcome, Forwarded), outcome
    assert sent.startswith(outcome.head)


# -- the documented differences, one example each ----------------------------------


@pytest.mark.parametrize("name,applies,raw", STRICTER, ids=[name for name, _, _ in STRICTER])
def test_documented_stricter_than_h11(name: str, applies: Callable[[Seen], bool], raw: bytes) -> None:
    original = h11_read(raw)
    assert original.event is not None, original.error
    outcome = speedproxy_forward(raw)
    assert isinstance(outcome, Refused)
    assert applies(Seen(raw, original.event, outcome))
    check_against_h11(raw)


@pytest.mark.parametrize("prefix", [b"\r\n", b"\r\n\r\n", b"\n", b"\r"])
def test_leading_empty_lines_are_skipped(prefix: bytes) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert h11_read(prefix + raw).error is not None  # h11: "no request line received"
    outcome, plain = speedproxy_forward(prefix + raw), speedproxy_forward(raw)
    assert isinstance(outcome, Forwarded) and isinstance(plain, Forwarded)
    assert outcome.head == plain.head
    check_against_h11(prefix + raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",  # h11: conflicting
        b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",  # h11: only chunked
        b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 000000000000000000001\r\n\r\n",  # over 20 digits
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
    ],
)
def test_both_refuse(raw: bytes) -> None:
    assert h11_read(raw).error is not None
    assert isinstance(speedproxy_forward(raw), Refused)


@pytest.mark.parametrize(
    "raw,framing",
    [
        (b"POST /a/../b?x HTTP/1.1\r\nHost: h\r\nContent-Length: 007\r\n\r\n", 7),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  Chunked \r\n\r\n", "chunked"),
        (b"POST http://o:81/p HTTP/1.1\r\nHost: h\r\nConnection: x-custom\r\nX-Custom: 1\r\n\r\n", 0),
        (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n", 0),
        (b"GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\nVia: 1.0 a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
         0),
        (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", 0),
        (b"GET HTTP://h HTTP/1.0\r\n\r\n", 0),
    ],
)
def test_examples_forwarded_as_h11_reads_them(raw: bytes, framing: Union[str, int]) -> None:
    outcome = speedproxy_forward(raw)
    assert isinstance(outcome, Forwarded)
    assert speedproxy_framing(outcome.request) == framing
    check_against_h11(raw)


# -- divergences the oracle found, fixed: kept as regression tests --------------------


def test_connection_naming_host_keeps_host() -> None:
    """``Connection: host`` used to make the proxy drop Host (h11: "Missing mandatory Host")."""
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n"
    outcome = speedproxy_forward(raw)
    assert isinstance(outcome, Forwarded)
    forwarded = h11_read(outcome.head)
    assert forwarded.error is None, forwarded.error
    assert values(forwarded.event.headers, b"host") == [b"h"]
    check_against_h11(raw)


def test_http10_without_host_gets_the_backends_address() -> None:
    """An HTTP/1.0 request without Host used to go on as HTTP/1.1 without Host."""
    raw = b"GET / HTTP/1.0\r\n\r\n"
    outcome = speedproxy_forward(raw)
    assert isinstance(outcome, Forwarded)
    forwarded = h11_read(outcome.head)
    assert forwarded.error is None, forwarded.error
    assert values(forwarded.event.headers, b"host") == [BACKEND_ADDRESS]
    assert values(forwarded.event.headers, b"x-forwarded-host") == []
    check_against_h11(raw)


def test_obs_text_in_the_target_is_percent_encoded() -> None:
    """Raw bytes >= 0x80 in a target used to be forwarded raw (h11 refuses such a line)."""
    raw = b"GET /caf\xc3\xa9?q=\xff HTTP/1.1\r\nHost: h\r\n\r\n"
    assert h11_read(raw).error is not None
    outcome = speedproxy_forward(raw)
    assert isinstance(outcome, Forwarded)
    forwarded = h11_read(outcome.head)
    assert forwarded.error is None, forwarded.error
    assert forwarded.event.target == b"/caf%C3%A9?q=%FF"
