"""Shared-cache policy (RFC 9111, RFC 5861, RFC 9211) as pure functions.

Sans-I/O: every function takes parsed header lists (``[(name, value)]`` as
sent, values stripped of OWS) with the parallel list of lower-cased names,
and wall-clock times in float seconds.  What is needed on the hit path is
computed once when a response is stored (:class:`StoredPolicy`), so a hit
costs a couple of list lookups and some arithmetic.

This module is the one to import: it re-exports the rest of the policy,
kept in modules of one job each (:mod:`~speedproxy.cache.directives`
Cache-Control, :mod:`~speedproxy.cache.conditional` dates, validators and
conditional requests, :mod:`~speedproxy.cache.ranges` range requests,
:mod:`~speedproxy.cache.keys` cache keys, Vary and invalidation).

Choices where the RFCs leave one (each documented where it is made):

- duplicate directives: the first occurrence wins (RFC 9111 4.2.1);
  invalid freshness values (``max-age=abc``, an unparsable ``Expires``)
  make the response stale;
- only GET responses are stored (HEAD is answered from a stored GET);
  206 and 304 are never stored on their own; responses with Set-Cookie
  only under an explicit ``public`` or ``s-maxage``;
- the qualified forms ``no-cache="f"`` and ``private="f"`` are handled as
  the unqualified ones (RFC 9111 5.2.2.4, 5.2.2.7 allow it);
- heuristic freshness is the operator's ``default_ttl``, lowered to 10% of
  the time since Last-Modified when that is shorter (RFC 9111 4.2.2);
- stale-while-revalidate / stale-if-error windows come from the response
  when it has the directive, else from the route's defaults (an
  out-of-band contract, RFC 9111 4.2.4); never with no-cache,
  must-revalidate, proxy-revalidate or s-maxage.
"""

from __future__ import annotations

import math
import re
import time
from typing import Dict, List, Optional, Tuple, Union

from speedproxy.cache.conditional import (  # noqa: F401  (re-exported API)
    HOP_BY_HOP,
    Headers,
    combined_value,
    evaluate_conditionals,
    field_values,
    first_value,
    freshen_headers,
    http_date,
    not_modified_headers,
    parse_http_date,
    revalidation_matches,
    storage_headers,
    validators,
)
from speedproxy.cache.directives import (  # noqa: F401  (re-exported API)
    MAX_DELTA,
    NO_DIRECTIVES,
    Directives,
    RequestDirectives,
    delta_seconds,
    parse_cache_control,
    request_directives,
    response_directives,
)
from speedproxy.cache.keys import (  # noqa: F401  (re-exported API)
    SAFE_METHODS,
    cache_key,
    invalidates,
    invalidation_targets,
    variant_key,
    vary_names,
)
from speedproxy.cache.ranges import (  # noqa: F401  (re-exported API)
    UNSATISFIABLE,
    content_range,
    if_range_matches,
    make_boundary,
    multipart_byteranges,
    parse_range,
    range_request,
    unsatisfied_range,
)

#: Status codes cacheable by heuristic (RFC 9110 15.1).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
#: Final status codes whose caching rules this cache implements (for
#: ``must-understand``, RFC 9111 5.2.2.3): those of RFC 9110 but 206 and 304.
UNDERSTOOD_STATUSES = frozenset(
    {200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 307, 308}
    | set(range(400, 418))
    | {421, 422, 426, 429, 431, 451, 500, 501, 502, 503, 504, 505}
)
#: The errors after which a stale response may be served (RFC 5861 4).
ERROR_STATUSES = frozenset({500, 502, 503, 504})


# ------------------------------------------------------------------ storing


def storable(
    method: bytes,
    status: int,
    request_headers: Headers,
    request_lowered: List[bytes],
    response_headers: Headers,
    response_lowered: List[bytes],
    *,
    has_authorization: bool,
    heuristic_allowed_by_config: bool = True,
    directives: Optional[Directives] = None,
) -> Tuple[bool, str]:
    """May a shared cache store this response (RFC 9111 3, 3.5)?  ``(ok, reason)``.

    ``reason`` (empty when ok) is a token for the ``detail`` of Cache-Status.
    Only GET is stored (RFC 9111 allows HEAD; a HEAD response cannot answer
    a GET, and a stored GET answers HEAD).  206 (no partial storage) and 304
    are never stored.  ``must-understand`` overrides ``no-store`` for the
    status codes this cache understands and refuses the others.  Set-Cookie
    responses are stored only with ``public`` or ``s-maxage`` (like nginx
    and Varnish, which never store them; the origin must say it means it).
    ``Vary: *`` is not stored: it can never be reused (RFC 9111 4.1).
    A ``no-cache`` response is stored, to be revalidated on every use.
    Without ``heuristic_allowed_by_config``, explicit freshness (Expires,
    max-age, s-maxage) or ``public`` is required.
    """
    if method != b"GET":
        return False, "method"
    if status < 200 or status == 304:
        return False, "status"
    if status == 206:
        return False, "partial"
    if b"cache-control" in request_lowered and request_directives(request_headers, request_lowered).no_store:
        return False, "request-no-store"
    if directives is None:
        directives = response_directives(response_headers, response_lowered)
    if b"must-understand" in directives:
        if status not in UNDERSTOOD_STATUSES:
            return False, "must-understand"
    elif b"no-store" in directives:
        return False, "no-store"
    if b"private" in directives:
        return False, "private"
    explicit_shared = b"public" in directives or b"s-maxage" in directives
    if has_authorization and not (explicit_shared or b"must-revalidate" in directives):
        return False, "authorization"
    if b"vary" in response_lowered and vary_names(response_headers, response_lowered) is None:
        return False, "vary-star"
    if b"set-cookie" in response_lowered and not explicit_shared:
        return False, "set-cookie"
    if (
        explicit_shared
        or b"max-age" in directives
        or b"expires" in response_lowered
        or (heuristic_allowed_by_config and status in HEURISTIC_STATUSES)
    ):
        return True, ""
    return False, "no-freshness"


# ---------------------------------------------------------------- freshness


def freshness_lifetime(
    status: int,
    headers: Headers,
    lowered: List[bytes],
    default_ttl: float,
    *,
    response_time: Optional[float] = None,
    heuristic_allowed: bool = True,
    lm_factor: float = 0.1,
    directives: Optional[Directives] = None,
) -> float:
    """The freshness lifetime of a response in a shared cache (RFC 9111 4.2.1).

    ``s-maxage``, else ``max-age``, else ``Expires - Date`` (Date missing or
    invalid: ``response_time``, else now).  An invalid value makes the
    response stale (0).  Without explicit freshness, for a heuristically
    cacheable status or a ``public`` response, the heuristic (4.2.2) is
    ``default_ttl``, or ``lm_factor`` times the time since Last-Modified
    when shorter; ``lm_factor=0`` uses ``default_ttl`` alone, as nginx.
    """
    if directives is None:
        directives = response_directives(headers, lowered)
    if b"s-maxage" in directives:
        return float(delta_seconds(directives[b"s-maxage"]) or 0)
    if b"max-age" in directives:
        return float(delta_seconds(directives[b"max-age"]) or 0)
    date: Optional[float] = None
    if b"expires" in lowered:
        expires = parse_http_date(first_value(headers, lowered, b"expires"))
        if expires is None:
            return 0.0
        date = _date_value(headers, lowered, response_time)
        return min(max(expires - date, 0.0), float(MAX_DELTA))
    if not heuristic_allowed or default_ttl <= 0 or not (status in HEURISTIC_STATUSES or b"public" in directives):
        return 0.0
    if lm_factor > 0 and b"last-modified" in lowered:
        modified = parse_http_date(first_value(headers, lowered, b"last-modified"))
        if modified is not None:
            date = _date_value(headers, lowered, response_time)
            return min(float(default_ttl), float(MAX_DELTA), max((date - modified) * lm_factor, 0.0))
    return float(min(default_ttl, MAX_DELTA))


def _date_value(headers: Headers, lowered: List[bytes], response_time: Optional[float]) -> float:
    date = parse_http_date(first_value(headers, lowered, b"date")) if b"date" in lowered else None
    if date is not None:
        return date
    if response_time is not None:
        return response_time
    return time.time()


def age_value(headers: Headers, lowered: List[bytes]) -> int:
    """The Age field (RFC 9111 5.1): its first member, 0 when absent or invalid."""
    if b"age" not in lowered:
        return 0
    value = headers[lowered.index(b"age")][1]
    if b"," in value:
        value = value.split(b",", 1)[0].strip()
    return delta_seconds(value) or 0


def initial_age(headers: Headers, lowered: List[bytes], request_time: float, response_time: float) -> float:
    """``corrected_initial_age`` of a response (RFC 9111 4.2.3)."""
    date = parse_http_date(first_value(headers, lowered, b"date")) if b"date" in lowered else None
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    corrected_age_value = age_value(headers, lowered) + max(0.0, response_time - request_time)
    return max(apparent_age, corrected_age_value)


def current_age(initial: float, response_time: float, now: float) -> float:
    """``current_age`` (RFC 9111 4.2.3): the initial age plus the time since it was received."""
    resident = now - response_time
    return initial + resident if resident > 0 else initial


#: :func:`evaluate` outcomes.
FRESH = 0
#: Stale, but the client accepts it (``max-stale``): serve it.
STALE_SERVABLE = 1
#: Stale within stale-while-revalidate: serve it and revalidate in the background.
STALE_REVALIDATE = 2
#: Forward a conditional request (or answer 504 under ``only-if-cached``).
MUST_REVALIDATE = 3


class StoredPolicy:
    """What the hit path needs of a stored response, computed once when it is stored."""

    __slots__ = ("lifetime", "initial_age", "response_time", "no_cache", "no_stale", "swr", "sie")

    def __init__(
        self,
        lifetime: float,
        initial_age: float,
        response_time: float,
        no_cache: bool = False,
        no_stale: bool = False,
        swr: float = 0.0,
        sie: float = 0.0,
    ) -> None:
        self.lifetime = lifetime
        self.initial_age = initial_age
        self.response_time = response_time
        #: ``no-cache``: every use needs a successful revalidation.
        self.no_cache = no_cache
        #: Never served stale (no-cache, must-revalidate, proxy-revalidate, s-maxage).
        self.no_stale = no_stale
        #: stale-while-revalidate window, seconds past the lifetime.
        self.swr = swr
        #: stale-if-error window, seconds past the lifetime.
        self.sie = sie

    def __repr__(self) -> str:
        fields = ", ".join("%s=%r" % (name, getattr(self, name)) for name in self.__slots__)
        return "StoredPolicy(%s)" % fields


def stored_policy(
    status: int,
    headers: Headers,
    lowered: List[bytes],
    request_time: float,
    response_time: float,
    *,
    default_ttl: float = 0.0,
    stale_while_revalidate: float = 0.0,
    stale_if_error: float = 0.0,
    heuristic_allowed: bool = True,
    lm_factor: float = 0.1,
    directives: Optional[Directives] = None,
) -> StoredPolicy:
    """Compute the :class:`StoredPolicy` of a response being stored (or freshened).

    ``stale_while_revalidate`` / ``stale_if_error`` are the route's defaults;
    a directive in the response replaces them (an invalid one means 0).
    """
    if directives is None:
        directives = response_directives(headers, lowered)
    no_cache = b"no-cache" in directives
    no_stale = no_cache or (
        b"must-revalidate" in directives or b"proxy-revalidate" in directives or b"s-maxage" in directives
    )
    swr = sie = 0.0
    if not no_stale:
        swr = stale_while_revalidate
        if b"stale-while-revalidate" in directives:
            swr = float(delta_seconds(directives[b"stale-while-revalidate"]) or 0)
        sie = stale_if_error
        if b"stale-if-error" in directives:
            sie = float(delta_seconds(directives[b"stale-if-error"]) or 0)
    return StoredPolicy(
        freshness_lifetime(
            status,
            headers,
            lowered,
            default_ttl,
            response_time=response_time,
            heuristic_allowed=heuristic_allowed,
            lm_factor=lm_factor,
            directives=directives,
        ),
        initial_age(headers, lowered, request_time, response_time),
        response_time,
        no_cache,
        no_stale,
        swr,
        sie,
    )


def evaluate(stored: StoredPolicy, request: RequestDirectives, now: float) -> Tuple[int, float]:
    """May the stored response answer this request (RFC 9111 4, 4.2.4; RFC 5861 3)?

    Returns ``(outcome, ttl)`` where ``ttl`` is the remaining freshness in
    seconds (negative when stale), for ``Cache-Status: ...; ttl=``.
    Request ``no-cache`` and response ``no-cache`` always revalidate; a
    request ``max-age`` or ``min-fresh`` that the response does not meet
    revalidates, even within stale windows; ``max-stale`` allows stale
    (:data:`STALE_SERVABLE`) unless the response forbids stale reuse; then
    the stale-while-revalidate window applies.  Under ``only-if-cached``,
    :data:`MUST_REVALIDATE` means a 504 (RFC 9111 5.2.1.7).
    """
    age = now - stored.response_time
    age = stored.initial_age + age if age > 0 else stored.initial_age
    ttl = stored.lifetime - age
    if request is NO_DIRECTIVES and not stored.no_cache:
        if ttl > 0:
            return FRESH, ttl
    elif stored.no_cache or request.no_cache or (request.max_age is not None and age > request.max_age):
        return MUST_REVALIDATE, ttl
    elif ttl > 0:
        if request.min_fresh is None or ttl >= request.min_fresh:
            return FRESH, ttl
        return MUST_REVALIDATE, ttl
    if stored.no_stale:
        return MUST_REVALIDATE, ttl
    if request.max_stale is not None and -ttl <= request.max_stale:
        return STALE_SERVABLE, ttl
    if request.min_fresh is None and -ttl < stored.swr:
        return STALE_REVALIDATE, ttl
    return MUST_REVALIDATE, ttl


def stale_on_error(stored: StoredPolicy, request: RequestDirectives, now: float) -> bool:
    """After an error (:data:`ERROR_STATUSES` or no answer), may the stale response be served?

    RFC 5861 4: within the response's (or route's) stale-if-error window, or
    the request's own ``stale-if-error`` or ``max-stale``; never when the
    response forbids stale reuse (RFC 9111 4.2.4), nor against a request
    ``no-cache`` that does not itself allow it.
    """
    if stored.no_stale:
        return False
    staleness = current_age(stored.initial_age, stored.response_time, now) - stored.lifetime
    if request.stale_if_error is not None and staleness <= request.stale_if_error:
        return True
    if request.no_cache:
        return False
    if request.max_stale is not None and staleness <= request.max_stale:
        return True
    return staleness <= stored.sie


# ------------------------------------------------------------- Cache-Status

_SF_TOKEN = re.compile(rb"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*\Z")
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")


_names: Dict[bytes, bytes] = {}


def sf_item(value: Union[str, bytes]) -> bytes:
    """A Structured Field bare item for a string: a token when it is one, else an sf-string."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if _SF_TOKEN.match(value) is not None:
        return value
    value = _NOT_PRINTABLE.sub(b"?", value).replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + value + b'"'


def cache_status(
    hit: bool,
    fwd: Optional[Union[str, bytes]] = None,
    fwd_status: Optional[int] = None,
    ttl: Optional[float] = None,
    stored: bool = False,
    collapsed: bool = False,
    detail: Optional[Union[str, bytes]] = None,
    name: bytes = b"speedproxy",
    key: Optional[bytes] = None,
) -> bytes:
    """One ``Cache-Status`` member (RFC 9211), e.g. ``speedproxy; hit; ttl=3412``.

    ``fwd`` is one of bypass, method, uri-miss, vary-miss, miss, request,
    stale, partial; ``ttl`` is floored to integer seconds (negative: stale).
    ``name`` is sent as a token, or as an sf-string when it is not one.
    """
    item = _names.get(name)
    if item is None:
        item = _names[name] = sf_item(name)
    name = item
    if hit and fwd is None and not (stored or collapsed or detail or key or fwd_status is not None):
        if ttl is None:
            return name + b"; hit"
        return b"%s; hit; ttl=%d" % (name, math.floor(ttl))
    parts = [name]
    if hit:
        parts.append(b"hit")
    if fwd is not None:
        parts.append(b"fwd=" + (fwd.encode("ascii") if isinstance(fwd, str) else fwd))
    if fwd_status is not None:
        parts.append(b"fwd-status=%d" % fwd_status)
    if ttl is not None:
        parts.append(b"ttl=%d" % math.floor(ttl))
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    if key is not None:
        parts.append(b"key=" + sf_item(key))
    if detail:
        parts.append(b"detail=" + sf_item(detail))
    return b"; ".join(parts)


def age_header(seconds: float) -> bytes:
    """The ``Age`` value (RFC 9111 5.1): whole seconds, at least 0, at most 2^31."""
    if seconds < 1:
        return b"0"
    if seconds >= MAX_DELTA:
        return b"2147483648"
    return b"%d" % seconds
