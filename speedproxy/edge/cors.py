"""``cors``: which other origins' pages may call a route, answered by the proxy.

- A **preflight** (``OPTIONS`` with ``Origin`` and
  ``Access-Control-Request-Method``) is answered here: 204 with the allowed
  origin, methods, the requested headers and ``Access-Control-Max-Age`` when
  the origin, the method and every requested header are allowed; otherwise
  403 (``cors_refused``, JSON, no CORS headers: the browser refuses), counted
  as ``speedproxy_refused_total{reason="cors"}``.  No backend is asked.
- **Every other answer** of the route (the backend's, a cache hit, a local
  refusal, the proxy's own errors) gets ``Access-Control-Allow-Origin`` (the
  request's origin, or ``*`` when every origin is allowed without
  credentials), ``Access-Control-Allow-Credentials: true`` with
  ``credentials``, ``Access-Control-Expose-Headers`` with ``expose``, and
  ``Vary: Origin``, when the request's ``Origin`` is allowed.  An origin not
  listed gets no CORS headers at all; CORS headers a backend sent are
  dropped on such a route (the route's policy is the only one).
- Never a wildcard with credentials (the config refuses it).
"""

from __future__ import annotations

from typing import Any, Dict, FrozenSet, List, Optional, Tuple

from speedproxy.config.model import CorsConfig
from speedproxy.edge.refusals import refuse
from speedproxy.filters.base import Filter
from speedproxy.filters.messages import FilterRequest, FilterResponse, LocalResponse

#: Request headers a page may always send (CORS-safelisted names whose values need no check).
SAFELISTED = frozenset({"accept", "accept-language", "content-language"})

_ORIGIN = b"origin"
_REQUEST_METHOD = b"access-control-request-method"
_REQUEST_HEADERS = b"access-control-request-headers"
_PREFIX = b"access-control-"
_NAME_PREFIX = b"\n" + _PREFIX
_VARY = (b"Vary", b"Origin")

#: ``view.state`` keys: the header lines for this request's answers (as
#: :meth:`CorsFilter._answer` returns them); a preflight answered here.
STATE = "edge.cors"
PREFLIGHT = "edge.cors.preflight"

Lines = List[Tuple[bytes, bytes]]


class CorsPolicy:
    """A route's ``cors`` settings, ready to match origins and build headers."""

    def __init__(self, settings: CorsConfig) -> None:
        self.settings = settings
        origins = settings.origins
        self.any_origin = "*" in origins
        self.exact: FrozenSet[str] = frozenset(o for o in origins if o != "*" and "://*." not in o)
        #: ``(scheme + "://", "." + domain, ":port" or "")`` of ``scheme://*.domain[:port]``.
        self.patterns = []
        for item in origins:
            if "://*." in item:
                scheme, _, rest = item.partition("://*.")
                domain, colon, port = rest.partition(":")
                self.patterns.append((scheme + "://", "." + domain, colon + port))
        self.credentials = settings.credentials
        #: ``*`` is answered only when every origin is allowed without credentials.
        self.wildcard = self.any_origin and not self.credentials
        self.methods = frozenset(settings.methods)
        self.methods_value = ", ".join(settings.methods).encode("latin-1")
        self.any_header = "*" in settings.headers
        self.headers = frozenset(name.lower() for name in settings.headers if name != "*") | SAFELISTED
        self.expose_value = ", ".join(settings.expose).encode("latin-1")
        self.max_age = b"%d" % int(settings.max_age)

    def allows(self, origin: bytes) -> bool:
        """Is a request's ``Origin`` value allowed?"""
        if self.any_origin:
            return True
        text = origin.decode("latin-1").lower()
        if text in self.exact:
            return True
        for scheme, suffix, port in self.patterns:
            if not text.startswith(scheme):
                continue
            host = text[len(scheme) :]
            if port:
                if not host.endswith(port):
                    continue
                host = host[: -len(port)]
            elif ":" in host.rsplit("]", 1)[-1]:
                continue
            if host.endswith(suffix) and len(host) > len(suffix) and "/" not in host:
                return True
        return False

    def answer_lines(self, origin: Optional[bytes]) -> Lines:
        """The CORS header lines of an answer to a request from ``origin`` (``[]``: none)."""
        if origin is None or not self.allows(origin):
            return []
        lines: Lines = [(b"Access-Control-Allow-Origin", b"*" if self.wildcard else origin)]
        if self.credentials:
            lines.append((b"Access-Control-Allow-Credentials", b"true"))
        if self.expose_value:
            lines.append((b"Access-Control-Expose-Headers", self.expose_value))
        return lines


def _serialise(lines: Lines) -> bytes:
    return b"".join(name + b": " + value + b"\r\n" for name, value in lines)


class CorsFilter(Filter):
    """Answers preflights and puts the route's CORS headers on every answer."""

    def __init__(self, core: Any, settings: CorsConfig) -> None:
        self.core = core
        self.policy = CorsPolicy(settings)
        #: ``Vary: Origin`` on every answer, unless it never depends on the origin.
        self.vary = not self.policy.wildcard
        #: Origin -> (lines, serialised block, lines' lower-case names):
        #: clients of a route come from few origins.
        self._known: Dict[Optional[bytes], Tuple[Lines, bytes, List[bytes]]] = {}

    # -- request side --------------------------------------------------------------

    def _answer(self, origin: Optional[bytes]) -> Tuple[Lines, bytes, List[bytes]]:
        """The lines for ``origin``, their serialised block (with ``Vary``) and
        lower-case names (with ``vary``), remembered."""
        known = self._known.get(origin)
        if known is None:
            lines = self.policy.answer_lines(origin)
            with_vary = lines + [_VARY] if self.vary else lines
            known = (lines, _serialise(with_vary), [name.lower() for name, _ in with_vary])
            if len(self._known) >= 256:
                self._known.clear()
            self._known[origin] = known
        return known

    def _lines(self, view: FilterRequest) -> Lines:
        """This request's CORS lines (worked out once)."""
        return self._known_for(view)[0]

    def _known_for(self, view: FilterRequest) -> Tuple[Lines, bytes, List[bytes]]:
        state = view.state
        known = state.get(STATE)
        if known is None:
            request = view._exchange.request
            lowered = request.lowered
            origin = request.headers[lowered.index(_ORIGIN)][1] if _ORIGIN in lowered else None
            known = state[STATE] = self._answer(origin)
        return known

    def request(self, view: FilterRequest) -> Optional[LocalResponse]:
        request = view._exchange.request
        lowered = request.lowered
        if request.method == b"OPTIONS" and _ORIGIN in lowered and _REQUEST_METHOD in lowered:
            view.state[PREFLIGHT] = True
            return self._preflight(view, request)
        origin = request.headers[lowered.index(_ORIGIN)][1] if _ORIGIN in lowered else None
        known = view.state[STATE] = self._known.get(origin) or self._answer(origin)
        block = known[1]
        if block:
            view.error_headers += block  # the proxy's own errors (502, 504...) carry them too
        return None

    def _preflight(self, view: FilterRequest, request: Any) -> LocalResponse:
        policy = self.policy
        origin = request.header(_ORIGIN) or b""
        if not policy.allows(origin):
            return self._refuse(view, f"the origin {origin.decode('latin-1')!r} is not allowed")
        method = (request.header(_REQUEST_METHOD) or b"").strip().decode("latin-1")
        if method not in policy.methods:
            return self._refuse(view, f"the method {method!r} is not allowed")
        asked: List[str] = []
        for (_, value), name in zip(request.headers, request.lowered):
            if name == _REQUEST_HEADERS:
                asked += [part.strip().lower() for part in value.decode("latin-1").split(",") if part.strip()]
        if not policy.any_header:
            refused = [name for name in asked if name not in policy.headers]
            if refused:
                return self._refuse(view, f"the request header {refused[0]!r} is not allowed")
        headers = [
            ("Access-Control-Allow-Origin", "*" if policy.wildcard else origin.decode("latin-1")),
            ("Access-Control-Allow-Methods", policy.methods_value.decode("latin-1")),
        ]
        if asked:
            headers.append(("Access-Control-Allow-Headers", ", ".join(asked)))
        if policy.credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        if policy.settings.max_age > 0:
            headers.append(("Access-Control-Max-Age", policy.max_age.decode("ascii")))
        headers.append(("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"))
        return LocalResponse(204, headers)

    def _refuse(self, view: FilterRequest, detail: str) -> LocalResponse:
        return refuse(
            self.core,
            view,
            "cors",
            403,
            "cors_refused",
            detail,
            [("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")],
        )

    # -- answers -------------------------------------------------------------------

    def response_head(self, view: FilterRequest, response: FilterResponse) -> None:
        head = response._head
        headers, lowered = head.headers, head.lowered
        joined = b"\n".join(lowered)  # (one scan, not one per field)
        if _NAME_PREFIX in joined or joined.startswith(_PREFIX):
            for index in range(len(lowered) - 1, -1, -1):
                if lowered[index].startswith(_PREFIX):
                    del headers[index]
                    del lowered[index]
        lines, _, names = view.state.get(STATE) or self._known_for(view)
        headers.extend(lines)
        if self.vary:
            headers.append(_VARY)
        lowered.extend(names)  # (``vary`` included when it is sent)
        return None

    def local_response(self, view: FilterRequest, response: LocalResponse) -> None:
        if view.state.get(PREFLIGHT):
            return  # answered (or refused) by the preflight itself
        # A stored response keeps the backend's own CORS fields: never shown on this route.
        if response.headers:
            response.headers = [pair for pair in response.headers if not pair[0].lower().startswith(_PREFIX)]
        block = response.block
        if block and _PREFIX in block.lower():
            response.block = b"".join(
                line + b"\r\n" for line in block.split(b"\r\n") if line and not line.lower().startswith(_PREFIX)
            )
        response.headers += self._lines(view)
        if self.vary:
            response.headers.append(_VARY)

    def error(self, view: FilterRequest, status: int) -> None:
        """A filter nearer the backend may have replaced ``error_headers``: put ours back."""
        request = view._exchange.request
        lowered = request.lowered
        block = self._answer(request.headers[lowered.index(_ORIGIN)][1] if _ORIGIN in lowered else None)[1]
        if block and block not in view.error_headers:
            view.error_headers += block
        return None


def build(core: Any, config: Any, route: Any) -> Optional[CorsFilter]:
    """The filter of ``route`` (``None`` without ``cors``)."""
    if route.cors is None:
        return None
    return CorsFilter(core, route.cors)
