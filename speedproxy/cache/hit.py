"""The parts of a cache hit's answer that are the same from one hit to the next, made once.

A fresh hit's ``Cache-Status`` (``speedproxy; hit; ttl=N``) depends only on
the whole seconds of freshness left, and the head lines of a whole stored
response (:attr:`CachedObject.block <speedproxy.cache.entry.CachedObject>`
plus ``Age`` and ``Cache-Status``) only on the stored head and those two
numbers: a stored object keeps the ``Age`` and ``Cache-Status`` lines of its
last answer (``CachedObject.answer_memo``) with the ages (and, for a plain
hit, the freshness left) that show the same ``Age`` and ``ttl``, so the
repeated hits of a second cost two comparisons and one concatenation instead
of formatting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Tuple

from speedproxy.cache.directives import MAX_DELTA
from speedproxy.cache.policy import cache_status
from speedproxy.filters.messages import LocalResponse

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.cache.entry import CachedObject

_new = object.__new__
_INF = float("inf")

#: Whole seconds of freshness left -> ``Cache-Status`` value of a plain hit.
HIT_VALUES: Dict[int, bytes] = {}
#: Distinct values kept before :data:`HIT_VALUES` starts again (cleared in place).
HIT_VALUES_LIMIT = 4096


def hit_status(ttl: float) -> bytes:
    """``cache_status(True, ttl=ttl)`` for a fresh hit (``ttl > 0``), memoised."""
    seconds = int(ttl)  # (floor: ttl > 0)
    value = HIT_VALUES.get(seconds)
    if value is None:
        if len(HIT_VALUES) >= HIT_VALUES_LIMIT:
            HIT_VALUES.clear()
        value = HIT_VALUES[seconds] = cache_status(True, ttl=ttl)
    return value


def _age_window(age: float) -> Tuple[float, float, int]:
    """``(low, high, Age)``: the ages ``low <= age < high`` that show the same
    ``Age`` value (:func:`speedproxy.cache.policy.age_header`)."""
    if age < 1:
        return -_INF, 1.0, 0
    if age >= MAX_DELTA:
        return float(MAX_DELTA), _INF, MAX_DELTA
    seconds = int(age)
    return float(seconds), seconds + 1.0, seconds


def _remember(
    entry: "CachedObject", age: float, ttl_low: float, ttl_high: float, status_value: bytes
) -> Tuple[bytes, str]:
    """Make the answer lines of ``entry`` at ``age`` and keep them in its memo."""
    low, high, seconds = _age_window(age)
    block = entry.block
    extra = b"Age: %d\r\nCache-Status: %s\r\n" % (seconds, status_value)
    reason = entry.reason.decode("latin-1")
    # (The two lines only, not a copy of the stored ones: a memory tier of
    # small objects would otherwise hold every head twice.)
    entry.answer_memo = (low, high, ttl_low, ttl_high, status_value, block, extra, reason)
    return block + extra, reason


def _response(entry: "CachedObject", lines: bytes, reason: str) -> LocalResponse:
    # (LocalResponse.prebuilt, spelled out)
    response = _new(LocalResponse)
    response.status = entry.status
    response.reason = reason
    response.headers = []
    response.block = lines
    response.body = entry.body
    response.file = None
    return response


def fresh_answer(entry: "CachedObject", age: float, ttl: float) -> LocalResponse:
    """The plain hit: the whole stored response ``entry``, ``age`` seconds old
    with ``ttl > 0`` seconds of freshness left, answered with ``Cache-Status:
    speedproxy; hit; ttl=N`` (as :func:`whole_answer` with :func:`hit_status`).

    The memo holds the ages and the freshness that show the same ``Age`` and
    ``ttl`` (whole seconds): within them, the two lines are the last answer's.
    """
    block = entry.block
    memo = entry.answer_memo
    if memo is not None and memo[0] <= age < memo[1] and memo[2] <= ttl < memo[3] and memo[5] is block:
        return _response(entry, block + memo[6], memo[7])
    whole = float(int(ttl))  # (floor: ttl > 0)
    lines, reason = _remember(entry, age, whole, whole + 1.0, hit_status(ttl))
    return _response(entry, lines, reason)


def whole_answer(entry: "CachedObject", now: float, status_value: bytes) -> LocalResponse:
    """The whole stored response ``entry`` as an answer at ``now``, with
    ``Cache-Status: status_value`` (no conditionals, no range asked).

    Its header lines are ``entry.block`` then ``Age`` and ``Cache-Status``;
    those two are remembered on ``entry`` (``answer_memo``) for the next
    answer with the same ``Age`` (whole seconds) and value.  A head replaced
    by a 304 (a new ``block``) starts a new memo: the memo holds the block it
    was made for.  A body in a file (a disk hit) is
    left to the caller.
    """
    stored = entry.policy
    age = now - stored.response_time
    age = stored.initial_age + age if age > 0 else stored.initial_age  # (policy.current_age)
    block = entry.block
    memo = entry.answer_memo
    if memo is not None and memo[0] <= age < memo[1] and memo[5] is block and memo[4] == status_value:
        return _response(entry, block + memo[6], memo[7])
    lines, reason = _remember(entry, age, _INF, -_INF, status_value)  # (no ttl window: any value)
    return _response(entry, lines, reason)
