"""Strict, allocation-light HTTP/1.1 message parsing (sans I/O).

Everything here works on ``bytes`` and raises :class:`ProtocolError` carrying
the status the proxy should answer with.  The rules are the ones that keep
request smuggling out (RFC 9112 section 11.2): one framing per message, no
obs-fold, no duplicate or malformed ``Content-Length``, strict chunk sizes.
"""

from __future__ import annotations

import re
from typing import List, Optional, Tuple

Headers = List[Tuple[bytes, bytes]]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# Field values may hold visible ASCII, obs-text, SP and HTAB; nothing else.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# A request target: no whitespace, no control characters.
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
#: A Host value or a target's authority: host[:port], no path, no userinfo.
_BAD_AUTHORITY = re.compile(rb"[\x00-\x20\x7f/\\?#@]")
#: ``scheme://authority`` then the rest of an absolute-form target.
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)\Z", re.S)
_HIGH_BYTE = re.compile(rb"[\x80-\xff]")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
_DIGITS = re.compile(rb"[0-9]{1,18}\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}\Z")

#: The most header fields accepted in one head (431 beyond).
MAX_HEADER_COUNT = 128

BODYLESS_STATUS = frozenset({204, 304})


class ProtocolError(Exception):
    """A message the proxy refuses; ``status`` and ``code`` shape the answer."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _bad(detail: str) -> ProtocolError:
    return ProtocolError(400, "bad_request", detail)


class RequestHead:
    """A parsed request line and header block."""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "version",
        "headers",
        "lowered",
        "host",
        "content_length",
        "chunked",
        "keep_alive",
        "expect_continue",
        "connection_tokens",
        "upgrade",
        "event_stream",
        "request_id",
        "raw_size",
        "traceparent",
        "tracestate",
    )

    method: bytes
    #: The target in origin-form (``/path?query``) or ``*``; an absolute-form
    #: target has been turned into origin-form, its authority into ``host``.
    target: bytes
    #: The path of the target (no query): what is routed and forwarded;
    #: normalised (:mod:`speedproxy.proxy.paths`) once the request is started.
    path: bytes
    #: The query of the target, ``?`` included, or empty.
    query: bytes
    version: bytes
    headers: Headers
    #: Lower-cased field names, parallel to ``headers``.
    lowered: List[bytes]
    host: bytes
    content_length: Optional[int]
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    connection_tokens: Tuple[bytes, ...]
    upgrade: Optional[bytes]
    #: Did the client ask for ``text/event-stream`` (server-sent events)?
    event_stream: bool
    #: The client's ``X-Request-Id``, unvalidated.
    request_id: Optional[bytes]
    raw_size: int
    #: The client's W3C ``traceparent`` (unvalidated; ``b""`` when sent twice),
    #: set to ``None`` once found invalid (:mod:`speedproxy.tracing.context`).
    traceparent: Optional[bytes]
    #: The client's ``tracestate`` (several fields joined with ``,``).
    tracestate: Optional[bytes]

    @property
    def has_body(self) -> bool:
        """Does a body follow the head?"""
        return self.chunked or bool(self.content_length)

    def header(self, lowered_name: bytes) -> Optional[bytes]:
        """Return the first value of a header, by lower-case name."""
        for name, value in self.headers:
            if name.lower() == lowered_name:
                return value
        return None


_REQUEST_FIELDS = frozenset(
    {
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"expect",
        b"upgrade",
        b"x-request-id",
        b"accept",
        b"traceparent",
        b"tracestate",
    }
)
_RESPONSE_FIELDS = frozenset(
    {
        b"x-speedproxy",
        b"content-type",
        b"x-accel-buffering",
        b"upgrade",
        b"content-length",
        b"transfer-encoding",
        b"connection",
    }
)


# The fast path splits a whole field block with patterns that cannot
# backtrack: a line is a token, a colon and anything without CR/LF; anything
# unusual (control characters, bare CR or LF, a line that is not a field)
# goes to the line-by-line parser, which says exactly what is wrong.
_FIELD_LINE = re.compile(rb"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([^\r\n]*)\r\n", re.M)
#: Every byte but the control characters (CR and LF are counted separately).
_NOT_CONTROL = bytes(
    byte for byte in range(256) if not (byte < 0x20 and byte not in (0x09, 0x0A, 0x0D)) and byte != 0x7F
)


def _split_fields(
    head: bytes, interesting: "frozenset[bytes]"
) -> Tuple[Headers, List[bytes], Headers]:
    """Fast path of :func:`_parse_fields` on the raw head (start line included)."""
    start = head.find(b"\r\n")
    if start < 0:
        return [], [], {}
    block = head[start + 2 :] + b"\r\n"
    pairs = _FIELD_LINE.findall(block)
    lines = len(pairs)
    # Every CR and LF must belong to a field line's CRLF (no bare CR or LF).
    if (
        block.count(b"\n") != lines
        or block.count(b"\r") != lines
        or block.translate(None, _NOT_CONTROL)  # what is left are control bytes
    ):
        return _parse_fields(head.split(b"\r\n"), interesting)
    if lines > MAX_HEADER_COUNT:
        raise ProtocolError(431, "request_header_fields_too_large", "too many header fields")
    headers: Headers = [(name, value.strip(b" \t")) for name, value in pairs]
    lowered = [name.lower() for name, _ in pairs]
    special = [
        (lname, headers[index][1]) for index, lname in enumerate(lowered) if lname in interesting
    ]
    return headers, lowered, special


def _parse_fields(
    lines: List[bytes], interesting: "frozenset[bytes]"
) -> Tuple[Headers, List[bytes], Headers]:
    """Parse header lines (after the start line) strictly, in one pass.

    Returns the fields as sent, their lower-cased names (reused when the
    head is forwarded) and the ``(lower-cased name, value)`` pairs of the
    ``interesting`` fields, in order.
    """
    if len(lines) > MAX_HEADER_COUNT + 1:
        raise ProtocolError(431, "request_header_fields_too_large", "too many header fields")
    headers: Headers = []
    lowered: List[bytes] = []
    special: Headers = []
    append = headers.append
    append_lowered = lowered.append
    token = _TOKEN.match
    bad_value = _BAD_VALUE.search
    for index in range(1, len(lines)):
        name, sep, value = lines[index].partition(b":")
        if not sep:
            raise _bad("header line without a colon")
        if token(name) is None:
            if name[:1] in (b" ", b"\t"):
                raise _bad("obsolete line folding is not allowed")
            raise _bad("invalid header field name %r" % name[:64].decode("latin-1"))
        value = value.strip(b" \t")
        if bad_value(value) is not None:
            raise _bad("control character in header %r" % name.decode("latin-1"))
        append((name, value))
        lname = name.lower()
        append_lowered(lname)
        if lname in interesting:
            special.append((lname, value))
    return headers, lowered, special


def _tokens(values: List[bytes]) -> Tuple[bytes, ...]:
    """Comma-separated list values (``Connection``), lower-cased."""
    if len(values) == 1 and b"," not in values[0]:
        token = values[0].strip().lower()
        return (token,) if token else ()
    return tuple(
        token.strip().lower() for value in values for token in value.split(b",") if token.strip()
    )


def _request_line(line: bytes, max_line: int) -> Tuple[bytes, bytes, bytes]:
    """Split and check a request line: ``(method, target, version)``."""
    if max_line and len(line) > max_line:
        raise ProtocolError(414, "uri_too_long", "request line longer than %d bytes" % max_line)
    parts = line.split(b" ")
    if len(parts) != 3:
        if len(parts) == 2:
            raise _bad("HTTP/0.9 request lines are not supported")
        raise _bad("malformed request line")
    method, target, version = parts
    if _TOKEN.match(method) is None:
        raise _bad("invalid method")
    if not target or _BAD_TARGET.search(target) is not None:
        raise _bad("invalid request target")
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        if _VERSION.match(version) is not None:
            raise ProtocolError(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1")
        raise _bad("malformed HTTP version")
    return method, target, version


def _absolute_target(target: bytes) -> Tuple[bytes, bytes]:
    """Split an absolute-form target into ``(authority, origin-form target)``."""
    match = _ABSOLUTE.match(target)
    if match is None:
        raise _bad("invalid request target")
    scheme, authority, rest = match.groups()
    if scheme.lower() not in (b"http", b"https"):
        raise _bad("unsupported scheme %r in the request target" % scheme[:16].decode("latin-1"))
    if b"@" in authority:
        raise _bad("userinfo in the request target")
    if not authority or _BAD_AUTHORITY.search(authority) is not None:
        raise _bad("invalid authority in the request target")
    if rest[:1] != b"/":
        if rest and rest[:1] != b"?":
            raise _bad("invalid request target")
        rest = b"/" + rest
    return authority, rest


def check_partial_head(data: bytes, max_line: int = 0, checked: int = 0) -> int:
    """Refuse at once a request head that is not complete yet but cannot be valid.

    ``data`` is what has arrived of a head (no blank line yet).  A NUL byte,
    a bare LF or CR, an HTTP/0.9 or otherwise malformed request line, an
    unknown version, a request line over ``max_line`` bytes or a malformed
    header line are answered without waiting for the rest.

    The check is incremental: it returns how far ``data`` has been checked
    (a line boundary), to be passed back as ``checked`` when more of the
    same head has arrived, so a head sent a byte at a time costs linear time.

    :raises ProtocolError: when the head can already be refused.
    """
    # Counted in place from ``checked``: nothing is copied.
    if data.find(b"\x00", checked) >= 0:
        raise _bad("NUL byte in the request head")
    crlf = data.count(b"\r\n", checked)
    if data.count(b"\n", checked) != crlf:
        raise _bad("bare LF in the request head (lines must end with CRLF)")
    bare_cr = data.count(b"\r", checked) - crlf
    if bare_cr and not (bare_cr == 1 and data[-1:] == b"\r"):
        raise _bad("bare CR in the request head")
    if not crlf:
        if not checked and max_line and len(data) > max_line:
            raise ProtocolError(414, "uri_too_long", "request line longer than %d bytes" % max_line)
        return checked
    if not checked:
        end = data.find(b"\r\n")
        _request_line(data[:end], max_line)
        checked = end + 2
    last = data.rfind(b"\r\n", checked)
    if last < checked:
        return checked
    # Complete header lines: ``_parse_fields`` skips its first item.
    _parse_fields([b""] + data[checked:last].split(b"\r\n"), _REQUEST_FIELDS)
    return last + 2


def parse_request_head(head: bytes, max_line: int = 0) -> RequestHead:
    """Parse a request head (without its final blank line).

    An absolute-form target (``GET http://host/x``) is turned into
    origin-form and its authority replaces the Host header (RFC 9112 3.2.2).
    ``max_line`` bounds the request line (414 over it; 0: no bound).

    :raises ProtocolError: for anything malformed or ambiguous.
    """
    end = head.find(b"\r\n")
    method, target, version = _request_line(head if end < 0 else head[:end], max_line)
    headers, lowered, special = _split_fields(head, _REQUEST_FIELDS)
    if not target.isascii():
        # A target is ASCII (RFC 3986); bytes a client sent raw (UTF-8 paths)
        # go on percent-encoded, as browsers would have sent them.
        target = _HIGH_BYTE.sub(lambda match: b"%%%02X" % match.group()[0], target)

    authority: Optional[bytes] = None
    if target[:1] != b"/":
        if target == b"*":
            if method != b"OPTIONS":
                raise _bad("'*' is only a target for OPTIONS")
        elif method == b"CONNECT":
            raise ProtocolError(405, "method_not_allowed", "CONNECT is not supported")
        else:
            authority, target = _absolute_target(target)
    query = target.find(b"?")

    request = RequestHead()
    request.method = method
    request.target = target
    if query < 0:
        request.path = target
        request.query = b""
    else:
        request.path = target[:query]
        request.query = target[query:]
    request.version = version
    request.headers = headers
    request.lowered = lowered
    request.raw_size = len(head)
    host: Optional[bytes] = None
    content_length: Optional[int] = None
    transfer_encoding: Optional[bytes] = None
    connection: Tuple[bytes, ...] = ()
    expect: Optional[bytes] = None
    upgrade: Optional[bytes] = None
    request_id: Optional[bytes] = None
    traceparent: Optional[bytes] = None
    tracestate: Optional[bytes] = None
    event_stream = False
    for lname, value in special:
        if lname == b"host":
            if host is not None:
                raise _bad("more than one Host header")
            host = value
        elif lname == b"content-length":
            if content_length is not None:
                raise _bad("more than one Content-Length header")
            if _DIGITS.match(value) is None:
                raise _bad("invalid Content-Length")
            content_length = int(value)
        elif lname == b"transfer-encoding":
            if transfer_encoding is not None:
                raise _bad("more than one Transfer-Encoding header")
            transfer_encoding = value
        elif lname == b"connection":
            connection = connection + _tokens([value])
        elif lname == b"expect":
            expect = value.lower()
        elif lname == b"upgrade":
            upgrade = value
        elif lname == b"x-request-id":
            if request_id is None:
                request_id = value
        elif lname == b"traceparent":
            traceparent = b"" if traceparent is not None else value  # two: invalid
        elif lname == b"tracestate":
            tracestate = value if tracestate is None else tracestate + b"," + value
        elif b"text/event-stream" in value.lower():  # accept
            event_stream = True
    if transfer_encoding is not None:
        if content_length is not None:
            raise _bad("both Content-Length and Transfer-Encoding")
        if version == b"HTTP/1.0":
            raise _bad("Transfer-Encoding in an HTTP/1.0 request")
        if transfer_encoding.lower() != b"chunked":
            raise ProtocolError(
                501, "not_implemented", "only Transfer-Encoding: chunked is supported"
            )
    if host is None:
        if version == b"HTTP/1.1":
            raise _bad("missing Host header")
        host = b""
    elif not host or _BAD_AUTHORITY.search(host) is not None:
        raise _bad("invalid Host header")
    if authority is not None and authority != host:
        # The target's authority wins over Host (RFC 9112 3.2.2): forward,
        # route and log the one meaning.
        try:
            index = lowered.index(b"host")
        except ValueError:
            headers.append((b"Host", authority))
            lowered.append(b"host")
        else:
            headers[index] = (headers[index][0], authority)
        host = authority
    request.host = host
    request.content_length = content_length
    request.chunked = transfer_encoding is not None
    request.connection_tokens = connection
    if version == b"HTTP/1.1":
        request.keep_alive = b"close" not in connection
    else:
        request.keep_alive = b"keep-alive" in connection
    if expect is not None and expect != b"100-continue":
        raise ProtocolError(417, "expectation_failed", "only Expect: 100-continue is supported")
    request.expect_continue = expect is not None and version == b"HTTP/1.1"
    # Only a GET may be upgraded (a WebSocket handshake); on any other
    # method Upgrade is dropped as the hop-by-hop field it is.
    request.upgrade = upgrade if b"upgrade" in connection and method == b"GET" else None
    request.request_id = request_id
    request.traceparent = traceparent
    request.tracestate = tracestate
    request.event_stream = event_stream
    return request


class ResponseHead:
    """A parsed status line and header block from a backend."""

    __slots__ = (
        "version",
        "status",
        "reason",
        "headers",
        "lowered",
        "content_length",
        "chunked",
        "keep_alive",
        "connection_tokens",
        "streaming",
        "upgrade",
        "speedproxy",
    )

    version: bytes
    status: int
    reason: bytes
    headers: Headers
    #: Lower-cased field names, parallel to ``headers``.
    lowered: List[bytes]
    content_length: Optional[int]
    chunked: bool
    keep_alive: bool
    connection_tokens: Tuple[bytes, ...]
    #: ``text/event-stream`` or ``X-Accel-Buffering: no``: flush as it comes.
    streaming: bool
    #: The ``Upgrade`` value of a 101 answer.
    upgrade: Optional[bytes]
    #: ``X-Speedproxy`` of a backend that is a speedproxy too (nested proxies).
    speedproxy: Optional[bytes]


def parse_response_head(head: bytes) -> ResponseHead:
    """Parse a backend's response head (without its final blank line).

    :raises ProtocolError: (502) for anything malformed or ambiguous.
    """
    try:
        end = head.find(b"\r\n")
        version, _, rest = (head if end < 0 else head[:end]).partition(b" ")
        status_text, _, reason = rest.partition(b" ")
        if version != b"HTTP/1.1" and version != b"HTTP/1.0":
            raise _bad("malformed status line")
        if len(status_text) != 3 or not status_text.isdigit():
            raise _bad("malformed status code")
        headers, lowered, special = _split_fields(head, _RESPONSE_FIELDS)
    except ProtocolError as error:
        raise ProtocolError(502, "bad_gateway", "invalid response from backend: " + error.detail)

    response = ResponseHead()
    response.version = version
    response.status = int(status_text)
    response.reason = reason
    response.headers = headers
    response.lowered = lowered
    content_length: Optional[int] = None
    chunked = False
    connection: Tuple[bytes, ...] = ()
    streaming = False
    upgrade: Optional[bytes] = None
    speedproxy: Optional[bytes] = None
    for lname, value in special:
        if lname == b"content-length":
            if _DIGITS.match(value) is None or (
                content_length is not None and int(value) != content_length
            ):
                raise ProtocolError(502, "bad_gateway", "invalid Content-Length from backend")
            content_length = int(value)
        elif lname == b"connection":
            connection = connection + _tokens([value])
        elif lname == b"content-type":
            streaming = value[:17].lower() == b"text/event-stream" or streaming
        elif lname == b"transfer-encoding":
            if value.lower() != b"chunked" or chunked:
                raise ProtocolError(502, "bad_gateway", "unsupported Transfer-Encoding from backend")
            chunked = True
        elif lname == b"x-accel-buffering":
            if value.lower() == b"no":
                streaming = True
        elif lname == b"x-speedproxy":
            speedproxy = value
        else:  # upgrade
            upgrade = value
    if chunked:
        if content_length is not None:
            # RFC 9112 6.3: Transfer-Encoding overrides Content-Length, and
            # the connection of such a message must not be reused.
            connection = connection + (b"close",)
        content_length = None
    response.content_length = content_length
    response.streaming = streaming
    response.upgrade = upgrade
    response.speedproxy = speedproxy
    response.chunked = chunked
    response.connection_tokens = connection
    if version == b"HTTP/1.1":
        response.keep_alive = b"close" not in connection
    else:
        response.keep_alive = b"keep-alive" in connection
    return response


class ChunkedDecoder:
    """Incremental, strict decoder of a chunked body.

    Feed it bytes; it returns the data pieces found and sets :attr:`done`
    once the last chunk and trailers have been read, leaving any bytes that
    follow the message in :attr:`leftover`.
    """

    __slots__ = ("_state", "_remaining", "_line", "done", "leftover", "_max_line")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self, max_line: int = 4096) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._line = b""
        self._max_line = max_line
        self.done = False
        self.leftover = b""

    def feed(self, data: bytes) -> List[bytes]:
        """Consume ``data``; return the body pieces it completed.

        :raises ProtocolError: on a malformed chunk size, line ending or trailer.
        """
        pieces: List[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == self._DATA:
                take = min(self._remaining, end - pos)
                pieces.append(data[pos : pos + take] if (pos or take != end) else data)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._DATA_END
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._line += data[pos:]
                if len(self._line) > self._max_line:
                    raise _bad("chunk line too long")
                break
            line = self._line + data[pos:newline + 1]
            self._line = b""
            pos = newline + 1
            if line[-2:] != b"\r\n" or len(line) > self._max_line:
                raise _bad("malformed chunk line ending")
            line = line[:-2]
            if state == self._SIZE:
                size_text, _, extension = line.partition(b";")
                if _HEX.match(size_text) is None:
                    raise _bad("invalid chunk size")
                if _BAD_VALUE.search(extension) is not None:
                    raise _bad("invalid chunk extension")
                size = int(size_text, 16)
                if size:
                    self._remaining = size
                    self._state = self._DATA
                else:
                    self._state = self._TRAILER
            elif state == self._DATA_END:
                if line:
                    raise _bad("chunk data longer than its size")
                self._state = self._SIZE
            else:  # trailer section
                if not line:
                    self.done = True
                    self.leftover = data[pos:]
                    return pieces
                name, sep, value = line.partition(b":")
                if not sep or _TOKEN.match(name) is None or _BAD_VALUE.search(value):
                    raise _bad("invalid trailer field")
        return pieces


def encode_chunk(data: bytes) -> bytes:
    """Frame one piece of body as a chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
