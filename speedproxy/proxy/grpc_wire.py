"""What the gRPC relay reads and writes of gRPC over HTTP/2: content types, deadlines, statuses.

See gRPC's "PROTOCOL-HTTP2" document: a call is a POST with
``content-type: application/grpc[+proto|;...]``; ``grpc-timeout`` is at most
eight digits and a unit (``H M S m u n``); a status travels in the trailers
(``grpc-status``, ``grpc-message`` percent-encoded) or, for a call answered
at once, in a *trailers-only* response: one HEADERS frame with END_STREAM.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

# The status codes the relay answers itself (grpc/status.h).
OK = 0
CANCELLED = 1
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
UNAVAILABLE = 14

_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])\Z")
_UNIT = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def is_grpc(content_type: Optional[bytes]) -> bool:
    """Is this the content type of a gRPC call (and not of gRPC-Web)?"""
    if content_type is None or not content_type.startswith(b"application/grpc"):
        return False
    rest = content_type[16:17]
    return rest in (b"", b"+", b";")


#: A regular field name: a lower-case token (RFC 9113 8.2.1).
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+\Z")
#: What no field value may hold (RFC 9113 8.2.1).
_FORBIDDEN = re.compile(rb"[\r\n\0]")


def malformed_field(headers: Sequence[Tuple[bytes, bytes]], pseudo: bool) -> Optional[bytes]:
    """The name of the first field of a backend's head (``pseudo``: ``:status``
    allowed) or trailers that a client would refuse, or ``None``."""
    for name, value in headers:
        if _NAME.match(name) is None and not (pseudo and name == b":status"):
            return name
        if _FORBIDDEN.search(value) is not None:
            return name
    return None


def parse_timeout(value: bytes) -> Optional[float]:
    """``grpc-timeout`` in seconds; ``None`` when malformed (then ignored, as grpc does)."""
    found = _TIMEOUT.match(value)
    if found is None:
        return None
    return int(found.group(1)) * _UNIT[found.group(2)]


def format_timeout(seconds: float) -> bytes:
    """A ``grpc-timeout`` value for ``seconds`` left (at least 1 ns; rounded up)."""
    for unit, scale in ((b"n", 1e9), (b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60.0)):
        count = max(1, int(-(-(seconds * scale) // 1)))  # rounded up: at most 8 digits
        if count < 100_000_000:
            return b"%d%s" % (count, unit)
    return b"%dH" % min(99999999, int(-(-seconds // 3600)))


def encode_message(text: str) -> bytes:
    """``grpc-message``: UTF-8, percent-encoding what is not printable ASCII (and ``%``)."""
    out = bytearray()
    for byte in text.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def status_of(headers: Sequence[Tuple[bytes, bytes]]) -> Optional[int]:
    """The ``grpc-status`` in a header list, if any (and a number)."""
    for name, value in headers:
        if name == b"grpc-status":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def trailers(code: int, message: str) -> List[Tuple[bytes, bytes]]:
    """Trailers carrying a status the proxy gives itself."""
    return [(b"grpc-status", b"%d" % code), (b"grpc-message", encode_message(message))]


def trailers_only(code: int, message: str) -> List[Tuple[bytes, bytes]]:
    """A whole answer in one HEADERS frame (sent with END_STREAM): status 200 and a gRPC status."""
    return [(b":status", b"200"), (b"content-type", b"application/grpc")] + trailers(code, message)
