"""A route's filters, run in order on the request and in reverse on the response."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from twisted.internet.defer import Deferred

from speedproxy.filters.base import Filter
from speedproxy.filters.interface import IFilter
from speedproxy.filters.messages import FilterRequest, FilterResponse, LocalResponse, SharedResponse

RequestOutcome = Union[None, LocalResponse, SharedResponse, Deferred]


def _overrides(item: Any, hook: str) -> bool:
    """Does ``item`` have a ``hook`` of its own (not :class:`Filter`'s, which does nothing)?

    A hook set on the instance counts as its own; a filter that does not
    derive from :class:`Filter` has the hooks its class defines.
    """
    if hook in getattr(item, "__dict__", ()):
        return True  # set on the instance
    found = getattr(type(item), hook, None)
    return found is not None and found is not getattr(Filter, hook)


class FilterChain:
    """The filters of one route in one worker.

    As in Envoy's HTTP filter chain, request hooks run first to last and the
    first one that answers locally ends the chain; response hooks run last
    to first, so the filter nearest the backend sees the response first.
    """

    __slots__ = (
        "filters",
        "_reversed",
        "_requesters",
        "_heads",
        "_errors",
        "_body_filters",
        "body_filters",
        "_order",
        "_finishers",
        "_decorators",
        "wants_body",
        "rewrites_body",
        "sees_heads",
        "finishes",
        "sizes_tail",
        "decorates",
    )

    def __init__(self, filters: Sequence[IFilter]) -> None:
        self.filters = tuple(filters)
        self._reversed = tuple(reversed(self.filters))
        # Each hook runs only the filters that override it: a hook nobody
        # overrides costs nothing per request (no view of the response built).
        #: Filters with a ``request`` hook of their own, first to last.
        self._requesters = tuple(f for f in self.filters if _overrides(f, "request"))
        #: Filters with a ``response_head`` hook of their own, last to first.
        self._heads = tuple(f for f in self._reversed if _overrides(f, "response_head"))
        #: Filters with an ``error`` hook of their own, last to first.
        self._errors = tuple(f for f in self._reversed if _overrides(f, "error"))
        self._body_filters = tuple(f for f in self._reversed if getattr(f, "wants_body", False))
        #: The body filters that see every response's body, last to first; a
        #: filter with ``body_when_asked`` sees only the bodies of the
        #: responses its head hook asks for (:meth:`FilterRequest.want_body`):
        #: the others are relayed without it (zero-copy when nothing else looks).
        self.body_filters = tuple(f for f in self._body_filters if not getattr(f, "body_when_asked", False))
        #: Body filter -> its place among them (:meth:`ordered_body_filters`).
        self._order = {f: index for index, f in enumerate(self._body_filters)}
        #: Some filter may have to see a body: no zero-copy unless it says not.
        self.wants_body = bool(self._body_filters)
        #: Some filter may change the body's length: chunked to the client.
        self.rewrites_body = any(getattr(f, "rewrites_body", False) for f in self._body_filters)
        #: A body that leaves whole at its end (a held-back head and the body
        #: filters' tail) is sent with its length, not chunked (the compression
        #: filter's short bodies, ``Exchange.response_done``).
        self.sizes_tail = any(getattr(f, "sizes_tail", False) for f in self._body_filters)
        #: Some filter looks at the backend's response head (:meth:`response_head`).
        self.sees_heads = bool(self._heads)
        #: Filters with a ``finished`` hook of their own (the base one does nothing).
        self._finishers = tuple(f for f in self.filters if _overrides(f, "finished"))
        #: Some filter wants to know when a request is over (:meth:`finished`).
        self.finishes = bool(self._finishers)
        #: Filters with a ``local_response`` hook of their own, last to first.
        self._decorators = tuple(f for f in self._reversed if _overrides(f, "local_response"))
        #: Some filter wants to see local answers (:meth:`local_response`).
        self.decorates = bool(self._decorators)

    def request(self, request: FilterRequest, start: int = 0) -> RequestOutcome:
        """Run the request hooks from the ``start``-th filter that has one on.

        Returns ``None`` (go on to a backend), a :class:`LocalResponse`, or a
        ``Deferred`` firing with one of those.
        """
        filters = self._requesters
        for index in range(start, len(filters)):
            result = filters[index].request(request)
            if result is None:
                continue
            if isinstance(result, (LocalResponse, SharedResponse)):
                return result
            if isinstance(result, Deferred):
                return result.addCallback(self._resume, request, index)
            raise TypeError(
                f"filter {type(filters[index]).__name__}.request returned {type(result).__name__}, "
                "expected None, a LocalResponse or a Deferred"
            )
        return None

    def _resume(self, result: Any, request: FilterRequest, index: int) -> RequestOutcome:
        if result is None:
            return self.request(request, index + 1)
        if isinstance(result, (LocalResponse, SharedResponse)):
            return result
        raise TypeError(
            f"filter {type(self._requesters[index]).__name__}.request's Deferred fired with "
            f"{type(result).__name__}, expected None or a LocalResponse"
        )

    def response_head(self, request: FilterRequest, response: FilterResponse) -> Optional[LocalResponse]:
        """Run the head hooks; the first replacement answer ends them."""
        for item in self._heads:
            replacement = item.response_head(request, response)
            if replacement is not None:
                return replacement
        return None

    def error(self, request: FilterRequest, status: int) -> Optional[LocalResponse]:
        """Ask the filters for an answer instead of an error; the first one wins."""
        for item in self._errors:
            replacement = item.error(request, status)
            if replacement is not None:
                return replacement
        return None

    def local_response(self, request: FilterRequest, response: LocalResponse) -> None:
        """Let the filters that ask for it see (and add to) a local answer."""
        for item in self._decorators:
            item.local_response(request, response)

    def finished(self, request: FilterRequest, complete: bool) -> None:
        for item in self._finishers:
            item.finished(request, complete)

    def ordered_body_filters(self, filters: Sequence[IFilter]) -> tuple:
        """``filters`` (body filters of this chain) in the order body hooks run."""
        order = self._order
        return tuple(sorted(filters, key=order.__getitem__))

    def response_body(self, request: FilterRequest, data: bytes) -> bytes:
        """Run the body hooks of the response's body filters (``request.body_filters``)."""
        for item in request.body_filters:
            if not data:
                break
            data = item.response_body(request, data)
        return data

    def response_end(self, request: FilterRequest) -> bytes:
        """Let each body filter finish; return what they add at the end."""
        out = b""
        for item in request.body_filters:
            if out:
                out = item.response_body(request, out)
            extra: Optional[bytes] = item.response_end(request)
            if extra:
                out += extra
        return out
