"""JSON error responses with one stable shape.

``{"error": "bad_gateway", "detail": "...", "request_id": "..."}``
"""

from __future__ import annotations

import json

REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def error_body(code: str, detail: str, request_id: bytes) -> bytes:
    """Return the JSON body of an error answer."""
    return json.dumps(
        {"error": code, "detail": detail, "request_id": request_id.decode("ascii")}
    ).encode("utf-8") + b"\n"


def error_response(
    status: int,
    code: str,
    detail: str,
    request_id: bytes,
    server_tag: bytes,
    keep_alive: bool,
    head_only: bool = False,
    extra: bytes = b"",
) -> bytes:
    """Return a whole HTTP/1.1 error response, head and body.

    ``extra``: more header lines, each ending in CRLF (e.g. a filter's ``Cache-Status``).
    """
    body = error_body(code, detail, request_id)
    head = b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error")),
            b"Content-Type: application/json\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Cache-Control: no-store\r\n",
            extra,
            server_tag,
            b"X-Request-Id: ",
            request_id,
            b"\r\n",
            b"\r\n" if keep_alive else b"Connection: close\r\n\r\n",
        )
    )
    return head if head_only else head + body
