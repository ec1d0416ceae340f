"""HTTP dates, validators and conditional requests for the cache.

Pure functions over parsed header lists (``[(name, value)]`` as sent, values
stripped of OWS) and the parallel list of lower-cased names, as produced by
:mod:`speedproxy.proxy.http1`:

- HTTP-date parsing and formatting (RFC 9110 5.6.7);
- answering a client's conditional request from a stored response
  (RFC 9110 13.1, 13.2; RFC 9111 4.3.2) and the fields of a 304 (15.4.5);
- revalidating a stored response with the origin: the validators to send
  (RFC 9111 4.3.1) and how a 304 updates the stored fields (4.3.4).
"""

from __future__ import annotations

import re
import time
from email.utils import parsedate_tz
from typing import Dict, List, Optional, Tuple

from speedproxy.proxy.forwarding import HOP_BY_HOP

Headers = List[Tuple[bytes, bytes]]

# --------------------------------------------------------------------- fields


def first_value(headers: Headers, lowered: List[bytes], name: bytes) -> Optional[bytes]:
    """Return the value of the first field line named ``name`` (lower case)."""
    if name in lowered:
        return headers[lowered.index(name)][1]
    return None


def field_values(headers: Headers, lowered: List[bytes], name: bytes) -> List[bytes]:
    """Return the values of every field line named ``name`` (lower case), in order."""
    if name not in lowered:
        return []
    return [headers[index][1] for index, lname in enumerate(lowered) if lname == name]


def combined_value(headers: Headers, lowered: List[bytes], name: bytes) -> Optional[bytes]:
    """Return the field lines named ``name`` combined with ``", "`` (RFC 9110 5.3)."""
    if name not in lowered:
        return None
    if lowered.count(name) == 1:
        return headers[lowered.index(name)][1]
    return b", ".join(field_values(headers, lowered, name))


# ---------------------------------------------------------------- HTTP dates

_MONTHS = {
    name: number
    for number, name in enumerate(
        (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"), 1
    )
}
_MONTH_NAMES = (b"", b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")
_DAY_NAMES = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_DAYS_BEFORE = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
_DAYS_IN = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# RFC 9111 4.2: "a cache recipient SHOULD match the field value case-insensitively".
_IMF_FIXDATE = re.compile(rb"[a-z]{3}, (\d\d) ([a-z]{3}) (\d{4}) (\d\d):(\d\d):(\d\d) gmt\Z", re.I)
_RFC850 = re.compile(rb"[a-z]{6,9}, (\d\d)-([a-z]{3})-(\d\d) (\d\d):(\d\d):(\d\d) gmt\Z", re.I)
_ASCTIME = re.compile(rb"[a-z]{3} ([a-z]{3}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{4})\Z", re.I)

_date_memo: Dict[bytes, Optional[float]] = {}
_DATE_MEMO_SIZE = 1024


def _timestamp(year: int, month: int, day: int, hour: int, minute: int, second: int) -> Optional[float]:
    """Seconds since the epoch of a UTC civil time, or ``None`` if it is not one."""
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not (
        1 <= year <= 9999
        and 1 <= month <= 12
        and 1 <= day <= (_DAYS_IN[month] if month != 2 or leap else 28)
        and hour < 24
        and minute < 60
        and second <= 60  # a leap second
    ):
        return None
    before = year - 1
    days = before * 365 + before // 4 - before // 100 + before // 400 - 719162
    days += _DAYS_BEFORE[month] + (month > 2 and leap) + day - 1
    return float(days * 86400 + hour * 3600 + minute * 60 + min(second, 59))


def _parse_date(value: bytes) -> Optional[float]:
    match = _IMF_FIXDATE.match(value)
    if match is not None:
        day, month, year, hour, minute, second = match.groups()
        number = _MONTHS.get(month.lower())
        return None if number is None else _timestamp(int(year), number, int(day), int(hour), int(minute), int(second))
    match = _RFC850.match(value)
    if match is not None:
        day, month, year, hour, minute, second = match.groups()
        number = _MONTHS.get(month.lower())
        if number is None:
            return None
        # RFC 9110 5.6.7: a two-digit year more than 50 years in the future
        # is the most recent past year with the same last two digits.
        this_year = time.gmtime().tm_year
        full = this_year - this_year % 100 + int(year)
        if full > this_year + 50:
            full -= 100
        return _timestamp(full, number, int(day), int(hour), int(minute), int(second))
    match = _ASCTIME.match(value)
    if match is not None:
        month, day, hour, minute, second, year = match.groups()
        number = _MONTHS.get(month.lower())
        return None if number is None else _timestamp(int(year), number, int(day), int(hour), int(minute), int(second))
    # Robustness (RFC 9110 5.6.7 encourages it): other Internet Message
    # Format dates, as email.utils reads them.  Never a list of dates.
    if value.count(b",") > 1 or not value[:1].isalpha():
        return None
    try:
        parts = parsedate_tz(value.decode("latin-1"))
    except (ValueError, IndexError, TypeError, OverflowError):  # pragma: no cover - defensive
        return None
    if parts is None:
        return None
    stamp = _timestamp(parts[0], parts[1], parts[2], parts[3], parts[4], parts[5])
    if stamp is None:
        return None
    return stamp - (parts[9] or 0)


def parse_http_date(value: Optional[bytes]) -> Optional[float]:
    """Return an HTTP-date (RFC 9110 5.6.7) as a timestamp, or ``None`` if invalid.

    IMF-fixdate is read by a fast path; the obsolete RFC 850 and asctime
    formats are accepted too, case-insensitively (RFC 9111 4.2), and so are
    other RFC 5322 dates.  Results are memoised (the same few values come back
    on every request).
    """
    if value is None:
        return None
    try:
        return _date_memo[value]
    except KeyError:
        pass
    stamp = _parse_date(value.strip())
    if len(_date_memo) >= _DATE_MEMO_SIZE:
        _date_memo.clear()
    _date_memo[value] = stamp
    return stamp


_last_formatted: List[object] = [None, b""]


def http_date(timestamp: float) -> bytes:
    """Format a timestamp as an IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``)."""
    second = int(timestamp)
    if _last_formatted[0] == second:
        return _last_formatted[1]  # type: ignore[return-value]
    t = time.gmtime(second)
    text = b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAY_NAMES[t.tm_wday],
        t.tm_mday,
        _MONTH_NAMES[t.tm_mon],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )
    _last_formatted[0] = second
    _last_formatted[1] = text
    return text


# --------------------------------------------------------------- entity tags


def parse_etags(value: bytes) -> List[Tuple[bool, bytes]]:
    """Read a list of entity-tags (RFC 9110 8.8.3) as ``(weak, opaque-tag)`` pairs.

    The opaque tag keeps its quotes.  Tolerant: an unquoted member is taken
    as a tag as it stands, so non-conforming origins still compare equal to
    themselves.
    """
    tags: List[Tuple[bool, bytes]] = []
    index = 0
    end = len(value)
    while index < end:
        char = value[index]
        if char in b" \t,":
            index += 1
            continue
        weak = False
        if value.startswith(b"W/", index):
            weak = True
            index += 2
        if value.startswith(b'"', index):
            close = value.find(b'"', index + 1)
            if close < 0:
                tags.append((weak, value[index:]))
                break
            tags.append((weak, value[index : close + 1]))
            index = close + 1
        else:
            comma = value.find(b",", index)
            if comma < 0:
                comma = end
            tag = value[index:comma].strip()
            if tag:
                tags.append((weak, tag))
            index = comma
    return tags


def _split_etag(etag: bytes) -> Tuple[bool, bytes]:
    if etag.startswith(b"W/"):
        return True, etag[2:]
    return False, etag


def etag_matches(value: bytes, etag: Optional[bytes], strong: bool) -> bool:
    """Does a list of entity-tags (or ``*``) match the stored ``etag``?

    ``strong`` selects strong comparison (If-Match, If-Range) over weak
    comparison (If-None-Match), RFC 9110 8.8.3.2.  ``*`` matches any stored
    representation.
    """
    if value == b"*":
        return True
    if etag is None:
        return False
    if value == etag and not (strong and etag.startswith(b"W/")):
        return True
    weak, opaque = _split_etag(etag)
    if strong and weak:
        return False
    for tag_weak, tag in parse_etags(value):
        if tag == b"*":
            return True
        if tag == opaque and not (strong and tag_weak):
            return True
    return False


# ------------------------------------------------ conditional requests (13.2)

_CONDITIONALS = (b"if-none-match", b"if-modified-since", b"if-match", b"if-unmodified-since")


def _single_date(headers: Headers, lowered: List[bytes], name: bytes) -> Optional[float]:
    """A date field that must be one valid HTTP-date, else ignored (RFC 9110 13.1.3, 13.1.4)."""
    if lowered.count(name) != 1:
        return None
    return parse_http_date(headers[lowered.index(name)][1])


def evaluate_conditionals(
    method: bytes,
    request_headers: Headers,
    request_lowered: List[bytes],
    stored_headers: Headers,
    stored_lowered: List[bytes],
    stored_status: int = 200,
) -> Optional[int]:
    """Answer a client's preconditions from a stored response (RFC 9110 13.2.2).

    Returns 304 (Not Modified), 412 (Precondition Failed) or ``None`` (serve
    the stored response as usual).  Only GET and HEAD are answered from the
    cache; preconditions are ignored when the stored status is not 2xx
    (13.2.1).  Order: If-Match, else If-Unmodified-Since (412); then
    If-None-Match (weak comparison), else If-Modified-Since (304).

    If-Match and If-Unmodified-Since are evaluated against the stored
    response, as nginx does: a fresh stored response stands for the
    origin's current representation (RFC 9111 4.3.2 leaves them to the
    origin; a cache that answers them answers as the origin would).
    """
    if not (
        _CONDITIONALS[0] in request_lowered
        or _CONDITIONALS[1] in request_lowered
        or _CONDITIONALS[2] in request_lowered
        or _CONDITIONALS[3] in request_lowered
    ):
        return None
    if method != b"GET" and method != b"HEAD":
        return None
    if not 200 <= stored_status < 300:
        return None
    etag = first_value(stored_headers, stored_lowered, b"etag")
    if b"if-match" in request_lowered:
        value = combined_value(request_headers, request_lowered, b"if-match")
        if not etag_matches(value or b"", etag, strong=True):  # 13.1.1
            return 412
    elif b"if-unmodified-since" in request_lowered:  # 13.1.4
        since = _single_date(request_headers, request_lowered, b"if-unmodified-since")
        if since is not None:
            modified = parse_http_date(first_value(stored_headers, stored_lowered, b"last-modified"))
            if modified is not None and modified > since:
                return 412
    if b"if-none-match" in request_lowered:  # 13.1.2
        value = combined_value(request_headers, request_lowered, b"if-none-match")
        return 304 if etag_matches(value or b"", etag, strong=False) else None
    if b"if-modified-since" in request_lowered:  # 13.1.3
        since = _single_date(request_headers, request_lowered, b"if-modified-since")
        if since is not None:
            modified = parse_http_date(first_value(stored_headers, stored_lowered, b"last-modified"))
            if modified is not None and modified <= since:
                return 304
    return None


#: Fields a 304 carries from the stored response (RFC 9110 15.4.5).  Last-Modified
#: is sent too (allowed as cache-update guidance; nginx and Apache do).
NOT_MODIFIED_FIELDS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"}
)


def not_modified_headers(stored_headers: Headers, stored_lowered: List[bytes]) -> Headers:
    """The stored fields a 304 answer must carry (RFC 9110 15.4.5), as sent, in order."""
    fields = NOT_MODIFIED_FIELDS
    return [stored_headers[index] for index, name in enumerate(stored_lowered) if name in fields]


# ------------------------------------------------ revalidation (RFC 9111 4.3)


def validators(stored_headers: Headers, stored_lowered: List[bytes]) -> Headers:
    """The precondition fields to revalidate a stored response (RFC 9111 4.3.1).

    If-None-Match from ETag and If-Modified-Since from Last-Modified; both
    when both exist (the origin gives If-None-Match precedence).
    """
    fields: Headers = []
    etag = first_value(stored_headers, stored_lowered, b"etag")
    if etag is not None:
        fields.append((b"If-None-Match", etag))
    modified = first_value(stored_headers, stored_lowered, b"last-modified")
    if modified is not None:
        fields.append((b"If-Modified-Since", modified))
    return fields


# Fields never stored nor updated: the hop-by-hop ones the proxy never
# forwards either (RFC 9110 7.6.1; RFC 9111 3.1).
#: Fields a 304 does not update (RFC 9111 4.3.4): Content-Length, the
#: processed Content-Range, and Content-Encoding, which the stored bytes
#: depend on (a 304 cannot recode them; an exception the RFC allows "to
#: assure integrity of the stored response").
NOT_UPDATED = HOP_BY_HOP | {b"content-length", b"content-range", b"content-encoding"}


def _connection_listed(headers: Headers, lowered: List[bytes]) -> frozenset:
    if b"connection" not in lowered:
        return frozenset()
    return frozenset(
        token.strip().lower()
        for value in field_values(headers, lowered, b"connection")
        for token in value.split(b",")
    )


def storage_headers(headers: Headers, lowered: List[bytes]) -> Tuple[Headers, List[bytes]]:
    """The fields of a response to store: all but hop-by-hop and Connection-listed ones (RFC 9111 3.1)."""
    drop = HOP_BY_HOP | _connection_listed(headers, lowered)
    keep = [index for index, name in enumerate(lowered) if name not in drop]
    if len(keep) == len(lowered):
        return list(headers), list(lowered)
    return [headers[index] for index in keep], [lowered[index] for index in keep]


def revalidation_matches(
    stored_headers: Headers, stored_lowered: List[bytes], new_headers: Headers, new_lowered: List[bytes]
) -> bool:
    """May this 304 update this stored response (RFC 9111 4.3.4)?

    A validator in the 304 must be the stored one: an ETag by strong
    comparison when it is strong (weak comparison for a weak one), else a
    Last-Modified must be equal.  A 304 without validators answers the
    conditional request sent for this one stored response: it matches.
    """
    etag = first_value(new_headers, new_lowered, b"etag")
    if etag is not None:
        stored = first_value(stored_headers, stored_lowered, b"etag")
        if stored is None:
            return False
        weak, opaque = _split_etag(etag)
        stored_weak, stored_opaque = _split_etag(stored)
        return opaque == stored_opaque and weak == stored_weak
    modified = first_value(new_headers, new_lowered, b"last-modified")
    if modified is not None:
        stored = first_value(stored_headers, stored_lowered, b"last-modified")
        return stored is not None and parse_http_date(stored) == parse_http_date(modified)
    return True


def freshen_headers(
    stored_headers: Headers,
    stored_lowered: List[bytes],
    new_headers: Headers,
    new_lowered: List[bytes],
    response_time: Optional[float] = None,
) -> Tuple[Headers, List[bytes]]:
    """Update a stored response's fields with those of a 304 (RFC 9111 4.3.4).

    Each field of the 304 replaces all stored lines of that name, except
    Content-Length, Content-Range, Content-Encoding, hop-by-hop fields and
    those the 304's Connection lists.  The stored Age is dropped (it
    described the old exchange; the 304's own Age, if any, is kept).  A 304
    without Date gets ``Date: http_date(response_time)`` (RFC 9110 6.6.1) or,
    without ``response_time``, loses the stale one, so the recomputed age
    does not count the time the response spent stored.

    Recompute freshness and age from the result with the times of the
    revalidation exchange.
    """
    skip = NOT_UPDATED | _connection_listed(new_headers, new_lowered)
    updated = {name for name in new_lowered if name not in skip}
    updated.add(b"age")
    updated.add(b"date")
    headers: Headers = []
    lowered: List[bytes] = []
    for index, name in enumerate(stored_lowered):
        if name not in updated:
            headers.append(stored_headers[index])
            lowered.append(name)
    for index, name in enumerate(new_lowered):
        if name not in skip:
            headers.append(new_headers[index])
            lowered.append(name)
    if b"date" not in new_lowered and response_time is not None:
        headers.append((b"Date", http_date(response_time)))
        lowered.append(b"date")
    return headers, lowered
