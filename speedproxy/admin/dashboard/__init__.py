"""``GET /dashboard``: the live dashboard, one page on the admin listener.

The page (``index.html``, ``app.js``, ``style.css`` next to this module,
shipped as package data) holds no data itself, so it is served without the
API key, like ``/health``.  Everything it shows it fetches from the JSON API
every second, with the ``X-API-Key`` the operator typed (or passed once in
the URL fragment, ``/dashboard#key=...``), kept in a JavaScript variable
only: never in storage, cookies or the URL.

Paths: ``/dashboard`` (the page), ``/dashboard/app.js``,
``/dashboard/style.css``; ``/dashboard/`` redirects to ``/dashboard`` (the
page's links are relative to it, so a path prefix in front of the admin
listener keeps working); anything else below ``/dashboard/`` is the usual
JSON 404 behind the key.  A Content-Security-Policy allows nothing but this
origin: no CDN, no inline script, no framing.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Dict, Tuple

from twisted.web.server import NOT_DONE_YET, Request

from speedproxy.admin.json_resource import JSONResource, NotFoundResource, write_json

#: Served name -> (package file, Content-Type).
ASSETS: Dict[bytes, Tuple[str, bytes]] = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"app.js": ("app.js", b"text/javascript; charset=utf-8"),
    b"style.css": ("style.css", b"text/css; charset=utf-8"),
}

#: Only this origin; the page fetches the API with ``fetch`` and draws with inline SVG.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_cache: Dict[str, bytes] = {}


def asset(name: str) -> bytes:
    """The bytes of one of the page's files (read once from the package)."""
    data = _cache.get(name)
    if data is None:
        data = resources.files(__name__).joinpath(name).read_bytes()
        _cache[name] = data
    return data


class DashboardPage(JSONResource):
    """The dashboard's page and assets (open: they hold no data)."""

    open = True

    def render(self, request: Request) -> Any:
        if self.refused(request):  # only a body over admin.max_body_size
            return NOT_DONE_YET
        postpath = list(request.postpath or [])
        if not postpath:
            name = b""
        elif postpath == [b""]:
            # /dashboard/ -> /dashboard: the page's relative links assume no slash.
            request.setResponseCode(301)
            request.setHeader(b"Location", b"../dashboard")
            request.setHeader(b"Content-Length", b"0")
            request.finish()
            return NOT_DONE_YET
        elif len(postpath) == 1 and postpath[0] in ASSETS and postpath[0]:
            name = postpath[0]
        else:
            return NotFoundResource().render(request)
        method = request.method.upper()
        if method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            detail = f"{method.decode('ascii', 'replace')} is not allowed here"
            write_json(request, 405, {"error": "method_not_allowed", "detail": detail})
            return NOT_DONE_YET
        filename, content_type = ASSETS[name]
        body = asset(filename)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        # Revalidated on every load, so an upgrade is seen at once (it is small).
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
        request.setHeader(b"X-Frame-Options", b"DENY")
        request.write(body)
        request.finish()
        return NOT_DONE_YET
