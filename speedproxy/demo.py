"""A tiny demo origin so the shipped config answers out of the box.

Started by ``twistd speedproxy --demo-origin``; never used in production.
"""

from __future__ import annotations

import json

from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class DemoOrigin(Resource):
    """Answers every path with a short JSON description of the request."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        if request.path == b"/health":
            return b'{"status": "ok"}\n'
        return (
            json.dumps(
                {
                    "origin": "speedproxy demo origin",
                    "method": request.method.decode("latin-1"),
                    "path": request.uri.decode("latin-1"),
                    "x_forwarded_for": (request.getHeader(b"x-forwarded-for") or b"").decode("latin-1"),
                    "x_request_id": (request.getHeader(b"x-request-id") or b"").decode("latin-1"),
                },
                indent=2,
            ).encode("utf-8")
            + b"\n"
        )


class _QuietSite(Site):
    noisy = False

    def log(self, request: Request) -> None:
        """The proxy's access log already records these requests."""


def demo_site() -> Site:
    """The demo origin as a twisted.web site."""
    return _QuietSite(DemoOrigin())
