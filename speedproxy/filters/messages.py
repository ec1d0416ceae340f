"""What filters see: small views over the request and response being relayed.

Names and values are ``str`` (latin-1, as HTTP/1.1 fields are bytes);
changes go straight into the head that is forwarded.  Framing fields
(``Content-Length``, ``Transfer-Encoding``, ``Connection``, ``Host``,
``Upgrade``) cannot be changed by a filter: the proxy owns them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.proxy.http1 import ResponseHead
    from speedproxy.proxy.exchange import Exchange

#: Fields a filter may not set or remove.
PROTECTED = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"host", b"upgrade", b"keep-alive", b"te", b"trailer"}
)


def _encode(text: str, what: str) -> bytes:
    try:
        data = text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be latin-1 text, got {text!r}") from None
    if any(byte < 0x20 and byte != 0x09 or byte == 0x7F for byte in data):
        raise ValueError(f"{what} holds a control character: {text!r}")
    return data


class _Fields:
    """Header access shared by request and response views."""

    __slots__ = ()

    def _lists(self) -> Tuple[List[Tuple[bytes, bytes]], List[bytes]]:
        raise NotImplementedError

    def header(self, name: str) -> Optional[str]:
        """The first value of header ``name`` (any case), or ``None``."""
        wanted = name.lower().encode("latin-1")
        headers, lowered = self._lists()
        for index, lname in enumerate(lowered):
            if lname == wanted:
                return headers[index][1].decode("latin-1")
        return None

    def headers(self) -> List[Tuple[str, str]]:
        """Every header as ``(name, value)``, in order."""
        headers, _ = self._lists()
        return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]

    def set_header(self, name: str, value: str) -> None:
        """Replace every ``name`` header by one with ``value`` (or add it)."""
        raw_name = _encode(name, "header name")
        lname = raw_name.lower()
        if lname in PROTECTED or not raw_name or b":" in raw_name or b" " in raw_name:
            raise ValueError(f"a filter cannot set the {name!r} header")
        raw_value = _encode(value, f"value of {name!r}")
        self.remove_header(name)
        headers, lowered = self._lists()
        headers.append((raw_name, raw_value))
        lowered.append(lname)

    def remove_header(self, name: str) -> None:
        """Remove every ``name`` header."""
        lname = name.lower().encode("latin-1")
        if lname in PROTECTED:
            raise ValueError(f"a filter cannot remove the {name!r} header")
        headers, lowered = self._lists()
        for index in range(len(lowered) - 1, -1, -1):
            if lowered[index] == lname:
                del headers[index]
                del lowered[index]


class FilterRequest(_Fields):
    """The request a filter sees (one per request, shared by every filter).

    :attr:`state` is a scratch dict for a filter to pass things from its
    request hook to its response hooks.
    """

    __slots__ = ("_exchange", "state", "error_headers", "body_filters")

    def __init__(self, exchange: "Exchange", body_filters: Tuple[Any, ...] = ()) -> None:
        self._exchange = exchange
        self.state: Dict[str, Any] = {}
        #: Header lines (CRLF-terminated) added to the proxy's own error answer.
        self.error_headers = b""
        #: The filters whose body hooks see this response's body, in the
        #: order they run (the route chain's ``body_filters``, and those that
        #: asked with :meth:`want_body`); empty: the body is relayed as is.
        self.body_filters = body_filters

    def want_body(self, item: Any) -> None:
        """Have the body hooks of ``item`` (a filter of this route whose
        ``body_when_asked`` is true) see this response's body: called from
        its ``response_head`` hook."""
        if item in self.body_filters:
            return
        if not self.body_filters:
            self.body_filters = (item,)
        else:
            chain = self._exchange.route.filters
            self.body_filters = chain.ordered_body_filters(self.body_filters + (item,))

    def _lists(self) -> Tuple[List[Tuple[bytes, bytes]], List[bytes]]:
        request = self._exchange.request
        return request.headers, request.lowered

    @property
    def method(self) -> str:
        return self._exchange.request.method.decode("latin-1")

    @property
    def path(self) -> str:
        """The normalised path (what was routed)."""
        return self._exchange.request.path.decode("latin-1")

    @property
    def query(self) -> str:
        """The query, without its ``?`` (empty when there is none)."""
        return self._exchange.request.query[1:].decode("latin-1")

    @property
    def host(self) -> str:
        return self._exchange.request.host.decode("latin-1")

    @property
    def client_ip(self) -> str:
        return self._exchange.client_ip

    @property
    def request_id(self) -> str:
        return self._exchange.request_id.decode("ascii")

    @property
    def route(self) -> str:
        route = self._exchange.route
        return route.name if route is not None else ""


class FilterResponse(_Fields):
    """The backend's response head, as the response hooks see it."""

    __slots__ = ("_head",)

    def __init__(self, head: "ResponseHead") -> None:
        self._head = head

    def _lists(self) -> Tuple[List[Tuple[bytes, bytes]], List[bytes]]:
        return self._head.headers, self._head.lowered

    @property
    def status(self) -> int:
        return self._head.status

    @status.setter
    def status(self, value: int) -> None:
        if not 200 <= value <= 599:
            raise ValueError(f"a filter can only set a final status (200-599), got {value}")
        self._head.status = value


class LocalResponse:
    """An answer given by a filter instead of a backend's.

    ``Content-Length``, ``X-Request-Id`` and ``X-Speedproxy`` are added by
    the proxy; ``headers`` are ``(name, value)`` strings.
    """

    __slots__ = ("status", "headers", "body", "reason", "block", "file")

    def __init__(
        self,
        status: int,
        headers: Sequence[Tuple[str, str]] = (),
        body: bytes = b"",
        reason: Optional[str] = None,
    ) -> None:
        self.block = b""
        #: A body sent from a file instead of ``body`` (:class:`LocalBody`).
        self.file: Optional[LocalBody] = None
        if not 200 <= status <= 599:
            raise ValueError(f"a local response needs a final status (200-599), got {status}")
        if not isinstance(body, bytes):
            raise TypeError(f"a local response body must be bytes, got {type(body).__name__}")
        self.status = status
        self.headers = [(_encode(name, "header name"), _encode(value, f"value of {name!r}")) for name, value in headers]
        for name, _ in self.headers:
            if name.lower() in PROTECTED:
                raise ValueError(f"a local response cannot set the {name.decode()!r} header")
        self.body = body
        self.reason = reason

    @classmethod
    def prebuilt(cls, status: int, reason: Optional[str], block: bytes, body: bytes) -> "LocalResponse":
        """A response whose header lines are already serialised (``block``, each
        line ending in CRLF, no framing fields): the cache's hit path."""
        response = cls.__new__(cls)
        response.status = status
        response.headers = []
        response.block = block
        response.body = body
        response.reason = reason
        response.file = None
        return response


class SharedResponse:
    """A response already coming for another request, that this one may share.

    A request filter returns one (request coalescing); the proxy then calls
    :meth:`attach` with the request's exchange, and the source feeds it the
    response as the other request receives it: ``response_head(head,
    no_body)``, ``response_body(data)``, ``response_done(False)``.  A source
    that cannot serve it after all calls ``exchange.go_to_backend()``; one
    that fails half-way calls ``exchange.shared_response_failed()``.
    """

    def attach(self, exchange: "Exchange") -> None:
        raise NotImplementedError

    def detach(self, exchange: "Exchange") -> None:
        """The exchange ended (its client went away): stop feeding it."""


class LocalBody:
    """A local response body read from a file (a large disk hit), sent without copying."""

    __slots__ = ("fd", "offset", "length", "keep")

    def __init__(self, fd: int, offset: int, length: int, keep: Any = None) -> None:
        self.fd = fd
        self.offset = offset
        self.length = length
        #: Held while the body is sent (the owner of ``fd``).
        self.keep = keep
