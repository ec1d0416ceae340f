"""A small base for JSON resources: JSON out, JSON errors, Deferred support."""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request


class APIError(Exception):
    """An error answered as ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str, field: Optional[str] = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field


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
    return body


class JSONResource(Resource):
    """Dispatches ``render_<METHOD>`` to ``json_<METHOD>`` returning data or a Deferred."""

    isLeaf = True

    def render(self, request: Request) -> Any:
        method = request.method.decode("ascii", "replace").upper()
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
