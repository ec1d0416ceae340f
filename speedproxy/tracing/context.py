"""W3C Trace Context (``traceparent``/``tracestate``) on the data path.

The proxy is one hop of a trace (https://www.w3.org/TR/trace-context/): a
request that comes with a valid ``traceparent`` is forwarded with the same
trace id and flags and a new parent id (the proxy's own span id), and its
``tracestate`` as sent; a request without one, or with an invalid one,
starts a new trace (its ``tracestate`` is dropped).  Either way the trace id
goes into the access log.

Everything here costs a few hundred nanoseconds per request: new trace
contexts are popped from a list filled in batches (one ``os.urandom``,
``hexlify`` and ``split`` per batch), a client's value is checked with
slicing and one ``bytes.translate``, no regular expression, and the
forwarded field is joined into the request head with the rest of it.
"""

from __future__ import annotations

import os
import weakref
from binascii import hexlify
from itertools import repeat
from typing import List, Optional, Tuple

#: ``traceparent`` of version 00: ``00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>``.
LENGTH = 55
_HEX = b"0123456789abcdef"
_DASH = 0x2D
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
#: Last hex digit of flags with the ``sampled`` bit (0x01) set.
SAMPLED_DIGITS = frozenset(b"13579bdf")
#: Ids made per refill (one ``os.urandom`` call).
BATCH = 256

_live: "weakref.WeakSet[TraceIds]" = weakref.WeakSet()


def valid_traceparent(value: Optional[bytes]) -> bool:
    """Is ``value`` a ``traceparent`` the W3C spec says to continue?

    Version 00 is exactly 55 characters: 2 hex version, 32 hex trace id (not
    all zero), 16 hex parent id (not all zero), 2 hex flags, separated by
    ``-``, lower-case hex only.  A higher version (not ``ff``) is read by its
    first 55 characters when what follows them starts with ``-``
    (forward compatibility, section 4.3 of the spec).
    """
    if value is None:
        return False
    if len(value) != LENGTH:
        if len(value) < LENGTH or value[:2] == b"00" or value[LENGTH] != _DASH:
            return False
        value = value[:LENGTH]
    return (
        value[2] == _DASH
        and value[35] == _DASH
        and value[52] == _DASH
        and value.translate(None, _HEX) == b"---"  # everything else is lower-case hex
        and value[:2] != b"ff"
        and value[3:35] != _ZERO_TRACE
        and value[36:52] != _ZERO_SPAN
    )


def is_sampled(flags: bytes) -> bool:
    """Is the ``sampled`` bit (0x01) of trace flags (2 hex digits) set?"""
    return flags[1] in SAMPLED_DIGITS


class TraceIds:
    """New trace contexts for one worker, made in batches.

    :meth:`start` gives a request its trace context, a tuple ``(trace_id,
    span_id, trace_flags)`` of hex digits (32, 16 and 2): the trace the
    client sent or a new one, this hop's span id (the parent id forwarded)
    and the flags.  ``sample_ratio`` decides the ``sampled`` flag of new
    traces as OpenTelemetry's ``TraceIdRatioBased`` sampler does (on the
    trace id's low 64 bits), so a backend sampling on its parent's flag
    keeps the same traces as the proxy.
    """

    def __init__(self, sample_ratio: float = 1.0, batch: int = BATCH) -> None:
        self.sample_ratio = sample_ratio
        self._bound = round(sample_ratio * (1 << 64))
        #: Every new trace is sampled (``01``) or none is (``00``); else per id.
        self._flags: Optional[bytes] = b"01" if self._bound >= 1 << 64 else b"00" if self._bound <= 0 else None
        self._batch = batch
        #: Ready-made contexts of new traces, popped one per request.
        self._pool: List[Tuple[bytes, bytes, bytes]] = []
        _live.add(self)

    def start(self, request: object) -> Tuple[bytes, bytes, bytes]:
        """The trace context of ``request``: ``(trace_id, span_id, trace_flags)``.

        A valid ``traceparent`` keeps its trace id and flags; without one, or
        with an invalid one, a new trace starts and an invalid one is
        forgotten (``request.traceparent`` becomes ``None``), so its
        ``tracestate`` is not forwarded either.
        """
        pool = self._pool
        if not pool:
            self._refill()
        context = pool.pop()
        incoming = request.traceparent  # type: ignore[attr-defined]
        if incoming is None:
            return context
        if valid_traceparent(incoming):
            return (incoming[3:35], context[1], incoming[53:55])
        request.traceparent = None  # type: ignore[attr-defined]
        return context

    def new_trace(self) -> Tuple[bytes, bytes, bytes]:
        """``(trace_id, span_id, trace_flags)`` of a new trace (for tools and tests)."""
        return self.start(_NoParent())

    def _refill(self) -> None:
        count = self._batch
        traces = _hex_ids(16, count)
        spans = _hex_ids(8, count)
        flags = self._flags
        if flags is not None:
            self._pool += zip(traces, spans, repeat(flags))
        else:
            bound = self._bound
            self._pool += zip(traces, spans, [b"01" if int(trace[16:], 16) < bound else b"00" for trace in traces])

    def _forget(self) -> None:
        self._pool.clear()


class _NoParent:
    """A request without a ``traceparent``."""

    traceparent = None


def _hex_ids(size: int, count: int) -> List[bytes]:
    """``count`` random ids of ``size`` bytes as lower-case hex, none all zero."""
    ids = hexlify(os.urandom(size * count), b" ", size).split()
    zero = b"0" * (2 * size)
    while zero in ids:  # 2**-64 at worst
        ids.remove(zero)
    return ids


def traceparent(trace_id: bytes, span_id: bytes, flags: bytes = b"01") -> bytes:
    """A version-00 ``traceparent`` value."""
    return b"00-" + trace_id + b"-" + span_id + b"-" + flags


def _after_fork() -> None:
    # A forked child must not hand out the ids its parent will also use.
    for ids in list(_live):
        ids._forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def header_value(headers: List, lowered: List[bytes], name: bytes) -> Optional[bytes]:
    """The value of a field by lower-case name in parallel header lists, or ``None``."""
    try:
        return headers[lowered.index(name)][1]
    except ValueError:
        return None


def cache_status_of_local(response: object) -> Optional[bytes]:
    """The ``Cache-Status`` of a filter's local response (a cache hit), or ``None``."""
    block = getattr(response, "block", b"")
    if block:
        start = block.lower().find(b"cache-status:")
        if start == 0 or (start > 0 and block[start - 1 : start] == b"\n"):
            end = block.find(b"\r\n", start)
            return block[start + 13 : end if end >= 0 else len(block)].strip()
    for name, value in getattr(response, "headers", ()):
        if name.lower() == b"cache-status":
            return value
    return None
