"""A convenient base class for filters: every hook does nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from zope.interface import implementer

from speedproxy.filters.interface import IFilter

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.filters.messages import FilterRequest, FilterResponse, LocalResponse


@implementer(IFilter)
class Filter:
    """Derive from this and override the hooks the filter needs."""

    #: Set to True when :meth:`response_body` must see the body.
    wants_body = False
    #: Set to True when :meth:`response_body` may change the body's length.
    rewrites_body = False
    #: Set to True (with ``wants_body``) when the body hooks matter only for
    #: the responses whose :meth:`response_head` calls
    #: ``request.want_body(self)``: the other bodies skip them.
    body_when_asked = False

    def request(self, request: "FilterRequest") -> object:
        return None

    def response_head(self, request: "FilterRequest", response: "FilterResponse") -> object:
        return None

    def response_body(self, request: "FilterRequest", data: bytes) -> bytes:
        return data

    def response_end(self, request: "FilterRequest") -> Optional[bytes]:
        return None

    def error(self, request: "FilterRequest", status: int) -> object:
        return None

    def local_response(self, request: "FilterRequest", response: "LocalResponse") -> None:
        return None

    def finished(self, request: "FilterRequest", complete: bool) -> None:
        return None
