"""Refusing a request at the edge: one JSON error shape, one counter.

Every edge filter that refuses (403 for an address, an origin or a
signature; 429 for a rate limit...) answers locally with the proxy's error
body (``{"error": code, "detail": ..., "request_id": ...}``, as
:mod:`speedproxy.proxy.errors` writes for its own errors) and counts the
refusal in ``speedproxy_refused_total{route,reason}``.  ``reason`` is one of
:data:`speedproxy.stats.segment.REFUSAL_REASONS`; a new kind of refusal
appends its reason there.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

from speedproxy.filters.messages import FilterRequest, LocalResponse
from speedproxy.proxy.errors import error_body
from speedproxy.stats.segment import REFUSAL_REASONS

_INDEX = {reason: index for index, reason in enumerate(REFUSAL_REASONS)}


def reason_index(reason: str) -> int:
    """The word of ``reason`` in the stats segment.

    :raises KeyError: for a reason not in :data:`REFUSAL_REASONS`.
    """
    try:
        return _INDEX[reason]
    except KeyError:
        raise KeyError(f"unknown refusal reason {reason!r} (add it to REFUSAL_REASONS)") from None


def count_refusal(core: Any, route: str, reason: str) -> None:
    """Count one refusal of ``route`` for ``reason`` in this worker's stats slot."""
    index = reason_index(reason)
    counter = getattr(getattr(core, "stats", None), "refused", None)
    stats_index = getattr(core, "stats_index", None)
    if counter is None or stats_index is None:
        return
    counter(stats_index.routes.get(route, -1), index)


def refusal_counter(core: Any, route: str) -> Callable[[str], None]:
    """``count(reason)`` for the filters of ``route`` (the route's stats slot is looked up when counting)."""
    for_reason = reason_index  # checked here, before a refusal needs it

    def count(reason: str) -> None:
        for_reason(reason)
        count_refusal(core, route, reason)

    return count


def refusal(
    request: FilterRequest, status: int, code: str, detail: str, headers: Sequence[Tuple[str, str]] = ()
) -> LocalResponse:
    """A local JSON error answer (not counted)."""
    return LocalResponse(
        status,
        [("Content-Type", "application/json"), ("Cache-Control", "no-store"), *headers],
        error_body(code, detail, request.request_id.encode("ascii")),
    )


def refuse(
    core: Any,
    request: FilterRequest,
    reason: str,
    status: int,
    code: str,
    detail: str,
    headers: Sequence[Tuple[str, str]] = (),
) -> LocalResponse:
    """Count a refusal for ``reason`` and build its JSON answer (``code``: the body's ``error``)."""
    count_refusal(core, request.route, reason)
    return refusal(request, status, code, detail, headers)
