"""The filter seam: how a feature looks at requests and responses of a route.

A *filter kind* (:class:`IFilterKind`) is found by name through Twisted's
plugin system, checks its options once when the config is loaded, and builds
one :class:`IFilter` per route in every worker.  Request hooks run before a
backend is chosen and may answer locally; response hooks see the head, every
piece of body and the end of the backend's answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.defer import Deferred

    from speedproxy.filters.messages import FilterRequest, FilterResponse, LocalResponse, SharedResponse


class FilterOptionsError(ValueError):
    """A filter's options are wrong; ``key`` names the option (or ``""``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class IFilterKind(IPlugin):
    """A kind of filter, as a plugin provides it (``twisted/plugins/*.py``).

    It extends Twisted's ``IPlugin``, so an object of a class declared
    ``@implementer(IFilterKind)`` in a plugin module is found by name.

    Named in a route's config as ``filters: [{name: NAME, options: {...}}]``.
    """

    name = Attribute("The name used in the config, e.g. ``acme.add_tenant_header``.")

    def check_options(options: Mapping[str, Any]) -> Any:
        """Validate ``options`` (plain YAML/JSON data) and return them parsed.

        Runs in ``--check``, in the master and in every worker; it must not
        touch the network or the reactor.

        :raises FilterOptionsError: naming the option that is wrong.
        """

    def build(options: Any, context: "FilterContext") -> "IFilter":
        """Create the filter of one route in one worker from checked options."""


class IFilter(Interface):
    """One route's instance of a filter kind, in one worker.

    Every hook is optional when the class derives from
    :class:`speedproxy.filters.base.Filter`.  An exception raised by a hook
    is logged and answers that request with a 500 (or cuts a response that
    was already under way); the worker goes on.
    """

    wants_body = Attribute(
        "True if :meth:`response_body` must see the body (no zero-copy relay then)."
    )
    rewrites_body = Attribute(
        "True if :meth:`response_body` may change the body's length (sent chunked then)."
    )
    body_when_asked = Attribute(
        "Optional (False when absent). True if, with ``wants_body``, the body hooks run only "
        "for responses whose :meth:`response_head` called ``request.want_body(filter)``: "
        "other responses are relayed without them (zero-copy when no other filter looks)."
    )

    def request(request: "FilterRequest") -> "Union[None, LocalResponse, SharedResponse, Deferred]":
        """Look at (and maybe change) a request before a backend is chosen.

        Return ``None`` to go on, a :class:`LocalResponse` to answer it
        here (no backend is asked), a :class:`SharedResponse` to have it
        answered by a response that is already coming for another request
        (coalescing), or a ``Deferred`` firing with one of those.
        """

    def response_head(request: "FilterRequest", response: "FilterResponse") -> "Optional[LocalResponse]":
        """Look at (and maybe change) the backend's response head.

        Return a :class:`LocalResponse` to send it instead of the backend's
        answer (a 304 that refreshed a stored response, a stale response
        instead of a 5xx); the backend's body still goes through
        :meth:`response_body` and :meth:`response_end`, and is not sent.
        """

    def response_body(request: "FilterRequest", data: bytes) -> bytes:
        """Return the piece of body to send on (maybe changed, maybe empty)."""

    def response_end(request: "FilterRequest") -> Optional[bytes]:
        """The body is complete; return bytes to append, if any."""

    def error(request: "FilterRequest", status: int) -> "Optional[LocalResponse]":
        """No backend answer (``status`` is the 502/503/504 about to be sent).

        Return a :class:`LocalResponse` to send instead (stale-if-error).
        """

    def finished(request: "FilterRequest", complete: bool) -> None:
        """The request is over; ``complete``: a backend's response was relayed whole."""

    def local_response(request: "FilterRequest", response: "LocalResponse") -> None:
        """An answer made here rather than by a backend is about to be sent.

        Called for every :class:`LocalResponse` of the request, whichever
        filter made it (a cache hit, a refusal, a stale answer, a shared
        revalidated one), before anything is written: the filter may add
        headers (``response.headers``: ``(name, value)`` bytes) or change
        ``response.body`` (read ``response.file`` first if it is set, and
        drop it).  Response headers a filter adds to backend answers in
        :meth:`response_head` are added to local ones here (CORS).  Only
        filters overriding the base class's hook are called; last to first.
        """


class FilterContext:
    """What a filter may use: the worker's reactor and the route's name."""

    def __init__(self, reactor: Any, route: str) -> None:
        self.reactor = reactor
        self.route = route
