"""A small base for JSON resources: JSON out, JSON errors, Deferred support."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Mapping, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request


class APIError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        field: Optional[str] = None,
        extra: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        #: More keys for the answer body (``problems``, ``config_version`` ...).
        self.extra = dict(extra or {})


def write_json(request: Request, status: int, body: Any) -> None:
    data = json.dumps(body, indent=2, sort_keys=False, default=str).encode("utf-8") + b"\n"
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Length", b"%d" % len(data))
    request.write(data)
    request.finish()


def error_body(error: APIError) -> dict:
    body = {"error": error.code, "detail": error.detail}
    if error.field is not None:
        body["field"] = error.field
    body.update(error.extra)
    return body


def bad_request(detail: str, field: Optional[str] = None, **extra: Any) -> APIError:
    return APIError(400, "bad_request", detail, field, extra)


def not_found(detail: str, field: Optional[str] = None) -> APIError:
    return APIError(404, "not_found", detail, field)


def read_json(request: Request, required: bool = True) -> Any:
    """The request body parsed as JSON (``None`` when empty and not ``required``).

    :raises APIError: 400 for a missing or malformed body.
    """
    content = request.content
    data = b""
    if content is not None:
        content.seek(0)
        data = content.read()
    if not data.strip():
        if required:
            raise bad_request("a JSON body is required")
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad_request("the body is not UTF-8") from None
    except ValueError as error:
        raise bad_request(f"malformed JSON: {error}") from None


def read_json_object(request: Request, required: bool = True) -> Dict[str, Any]:
    """The request body as a JSON object (``{}`` when empty and not ``required``)."""
    data = read_json(request, required)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise bad_request(f"the body must be a JSON object, got {type(data).__name__}")
    return data


def query(request: Request, name: str) -> Optional[str]:
    """The first value of query parameter ``name``, or ``None``."""
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


def query_int(request: Request, name: str, default: int, low: int = 0, high: int = 10000) -> int:
    """An integer query parameter within ``low..high`` (400 otherwise)."""
    text = query(request, name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {text!r}", name) from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}, got {value}", name)
    return value


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    text = query(request, name)
    if text is None or text == "":
        return default
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise bad_request(f"{name} must be true or false, got {text!r}", name)


class JSONResource(Resource):
    """Dispatches ``render_<METHOD>`` to ``json_<METHOD>`` returning data or a Deferred.

    A handler returns the body (answered 200), ``(status, body)``, or a
    Deferred of either; ``bytes`` bodies are sent as they are.  Before the
    handler runs, the site's gate (if any: see
    :class:`speedproxy.admin.site.AdminSite`) may refuse the request: a
    missing or wrong API key (unless the resource is :attr:`open`) or a
    body over the size limit.  ``HEAD`` is answered by ``json_GET``.
    """

    isLeaf = True
    #: Answer without an API key (health probes and monitoring only).
    open = False

    def refused(self, request: Request) -> bool:
        """Let the site's gate refuse ``request``; ``True`` if it was answered."""
        gate = getattr(getattr(request, "site", None), "gate", None)
        if gate is None:
            return False
        refusal = gate(request, self)
        if refusal is None:
            return False
        write_json(request, refusal.status, error_body(refusal))
        return True

    def render(self, request: Request) -> Any:
        if self.refused(request):
            return NOT_DONE_YET
        if self.isLeaf and request.postpath not in ([], [b""]):
            write_json(request, 404, {"error": "not_found", "detail": "no such admin endpoint"})
            return NOT_DONE_YET
        method = request.method.decode("ascii", "replace").upper()
        if method == "HEAD" and not hasattr(self, "json_HEAD"):
            method = "GET"
        handler: Optional[Callable[[Request], Any]] = getattr(self, "json_" + method, None)
        if handler is None:
            allowed = sorted(name[5:] for name in dir(self) if name.startswith("json_"))
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
            write_json(request, 405, {"error": "method_not_allowed", "detail": f"{method} is not allowed here"})
            return NOT_DONE_YET
        result: Deferred = maybeDeferred(handler, request)

        def done(value: Any) -> None:
            if request.finished or request._disconnected:  # type: ignore[attr-defined]
                return
            if isinstance(value, tuple):
                status, body = value
            else:
                status, body = 200, value
            if isinstance(body, bytes):
                request.setResponseCode(status)
                request.setHeader(b"Content-Length", b"%d" % len(body))
                request.write(body)
                request.finish()
            else:
                write_json(request, status, body)

        def failed(failure: Failure) -> None:
            if request.finished or request._disconnected:  # type: ignore[attr-defined]
                return
            if failure.check(APIError):
                error = failure.value
                write_json(request, error.status, error_body(error))
            else:
                from twisted.logger import Logger

                Logger(namespace="speedproxy.admin").failure("admin request failed", failure)
                write_json(request, 500, {"error": "internal_error", "detail": failure.getErrorMessage()})

        result.addCallbacks(done, failed)
        return NOT_DONE_YET

    def getChild(self, path: bytes, request: Request) -> Resource:
        """A trailing slash names the resource itself; anything else is unknown."""
        if path == b"":
            return self
        return NotFoundResource()


class NotFoundResource(JSONResource):
    """A JSON 404 (after the gate: unknown paths need the key too)."""

    def render(self, request: Request) -> Any:
        if not self.refused(request):
            detail = "no admin endpoint %r" % request.path.decode("latin-1")
            write_json(request, 404, {"error": "not_found", "detail": detail})
        return NOT_DONE_YET


class Namespace(JSONResource):
    """An inner node of the tree (``/api``, ``/api/v1`` ...): 404 itself."""

    isLeaf = False

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFoundResource()

    def render(self, request: Request) -> Any:
        return NotFoundResource().render(request)
