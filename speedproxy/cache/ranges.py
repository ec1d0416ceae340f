"""Range requests answered from a stored response (RFC 9110 14, 13.1.5, 15.3.7).

The cache stores whole representations (it never stores a 206) and slices
them: a single range is a 206 with ``Content-Range``, several ranges a
``multipart/byteranges`` 206 (overlapping or adjacent ranges are coalesced
first), none satisfiable a 416 with ``Content-Range: bytes */LENGTH``.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple, Union

from speedproxy.cache.conditional import Headers, combined_value, first_value, parse_http_date

#: More ranges than this in one request: ignore the Range field and send
#: the whole representation (RFC 9110 14.2 allows it; many small ranges
#: are a denial-of-service pattern).
MAX_RANGES = 16


class _Unsatisfiable:
    """The type of :data:`UNSATISFIABLE`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSATISFIABLE"


#: :func:`parse_range`: no range overlaps the representation (answer 416).
UNSATISFIABLE = _Unsatisfiable()

Ranges = List[Tuple[int, int]]
RangeResult = Union[None, _Unsatisfiable, Ranges]


def _coalesce(ranges: Ranges) -> Ranges:
    """Merge overlapping or adjacent ranges; keep the requested order when none touch."""
    ordered = sorted(ranges)
    touching = False
    for index in range(1, len(ordered)):
        if ordered[index][0] <= ordered[index - 1][1] + 1:
            touching = True
            break
    if not touching:
        return ranges
    merged = [ordered[0]]
    for start, end in ordered[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end + 1:
            if end > last_end:
                merged[-1] = (last_start, end)
        else:
            merged.append((start, end))
    return merged


def parse_range(value: bytes, length: int, max_ranges: int = MAX_RANGES) -> RangeResult:
    """Read a ``Range`` field value against a representation of ``length`` bytes.

    Returns ``None`` to ignore the field and send a 200 (not the ``bytes``
    unit, invalid syntax, an empty representation, more than ``max_ranges``
    ranges), :data:`UNSATISFIABLE` (416), or the ranges as inclusive
    ``(first, last)`` offsets clamped to the representation (RFC 9110 14.1.2).
    """
    unit, equals, specs = value.partition(b"=")
    if not equals or unit.strip().lower() != b"bytes" or length <= 0:
        return None
    ranges: Ranges = []
    seen = 0
    for spec in specs.split(b","):
        spec = spec.strip(b" \t")
        if not spec:
            continue  # empty list elements are allowed (RFC 9110 5.6.1)
        seen += 1
        first, dash, last = spec.partition(b"-")
        if not dash:
            return None
        if first:
            if not first.isdigit() or (last and not last.isdigit()):
                return None
            start = int(first)
            end = int(last) if last else length - 1
            if last and end < start:
                return None  # an invalid int-range invalidates the field (14.1.1)
            if start >= length:
                continue  # unsatisfiable on its own
            ranges.append((start, end if end < length else length - 1))
        else:
            if not last.isdigit():
                return None
            suffix = int(last)
            if suffix == 0:
                continue
            ranges.append((length - suffix if suffix < length else 0, length - 1))
    if not seen:
        return None
    if not ranges:
        return UNSATISFIABLE
    if len(ranges) > max_ranges:
        return None
    if len(ranges) > 1:
        ranges = _coalesce(ranges)
    return ranges


def if_range_matches(
    value: bytes, etag: Optional[bytes], last_modified: Optional[bytes], date: Optional[bytes] = None
) -> bool:
    """Does an ``If-Range`` value still designate the stored representation (RFC 9110 13.1.5)?

    An entity-tag must match the stored ETag by strong comparison (a weak
    tag never matches).  A date must equal the stored Last-Modified, which
    must be a strong validator: at least 60 s before the stored Date
    (RFC 9110 8.8.2.2), so without Date a date never matches.
    """
    value = value.strip()
    if value[:1] == b'"':
        return etag is not None and etag == value
    if value[:2] == b"W/":
        return False
    since = parse_http_date(value)
    modified = parse_http_date(last_modified)
    if since is None or modified is None or since != modified:
        return False
    sent = parse_http_date(date)
    return sent is not None and modified <= sent - 60


def range_request(
    method: bytes,
    request_headers: Headers,
    request_lowered: List[bytes],
    stored_headers: Headers,
    stored_lowered: List[bytes],
    length: int,
    stored_status: int = 200,
) -> RangeResult:
    """The ranges to send for a request answered from a stored response (RFC 9110 13.2.2 step 5).

    ``None`` (send the whole stored response) unless the request is a GET
    with one ``Range`` field, the stored status is 200 and any ``If-Range``
    matches; otherwise as :func:`parse_range`.
    """
    if b"range" not in request_lowered or method != b"GET" or stored_status != 200:
        return None
    if request_lowered.count(b"range") != 1:
        return None
    if b"if-range" in request_lowered:
        condition = combined_value(request_headers, request_lowered, b"if-range") or b""
        if not if_range_matches(
            condition,
            first_value(stored_headers, stored_lowered, b"etag"),
            first_value(stored_headers, stored_lowered, b"last-modified"),
            first_value(stored_headers, stored_lowered, b"date"),
        ):
            return None
    return parse_range(request_headers[request_lowered.index(b"range")][1], length)


def content_range(first: int, last: int, length: int) -> bytes:
    """``Content-Range`` of a 206 part: ``bytes FIRST-LAST/LENGTH``."""
    return b"bytes %d-%d/%d" % (first, last, length)


def unsatisfied_range(length: int) -> bytes:
    """``Content-Range`` of a 416: ``bytes */LENGTH`` (RFC 9110 15.5.17)."""
    return b"bytes */%d" % length


def make_boundary() -> bytes:
    """A fresh multipart boundary (random, so it cannot occur in the body by design)."""
    return os.urandom(12).hex().encode("ascii")


def multipart_byteranges(
    ranges: Ranges, length: int, content_type: Optional[bytes], boundary: bytes
) -> Tuple[bytes, List[Tuple[bytes, int, int]], bytes, int]:
    """Lay out a ``multipart/byteranges`` body (RFC 9110 14.6).

    Returns ``(Content-Type value, parts, closing delimiter, Content-Length)``
    where each part is ``(part head, first, last)``: write the head, then the
    stored bytes ``first..last`` inclusive, and after the last part the
    closing delimiter.
    """
    type_line = b"Content-Type: " + content_type + b"\r\n" if content_type else b""
    parts: List[Tuple[bytes, int, int]] = []
    total = 0
    for first, last in ranges:
        head = b"\r\n--%s\r\n%sContent-Range: bytes %d-%d/%d\r\n\r\n" % (boundary, type_line, first, last, length)
        parts.append((head, first, last))
        total += len(head) + last - first + 1
    closing = b"\r\n--" + boundary + b"--\r\n"
    return b"multipart/byteranges; boundary=" + boundary, parts, closing, total + len(closing)
