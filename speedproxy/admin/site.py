"""The admin site: the resource tree on ``admin.listen``."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Site

from speedproxy.admin.json_resource import JSONResource
from speedproxy.admin.stats import MetricsResource, StatsResource


class _NotFound(JSONResource):
    def render(self, request: Any) -> Any:
        from speedproxy.admin.json_resource import write_json
        from twisted.web.server import NOT_DONE_YET

        write_json(request, 404, {"error": "not_found", "detail": "no such admin endpoint"})
        return NOT_DONE_YET


class AdminRoot(Resource):
    """Maps paths to resources; unknown paths get a JSON 404."""

    def __init__(self, control: Any) -> None:
        super().__init__()
        self.putChild(b"stats", StatsResource(control))
        self.putChild(b"metrics", MetricsResource(control))

    def getChild(self, path: bytes, request: Any) -> Resource:
        return _NotFound()

    def render(self, request: Any) -> Any:
        return _NotFound().render(request)


class AdminSite(Site):
    noisy = False

    def log(self, request: Any) -> None:
        """Admin calls are audited separately; no access log here."""


def admin_site(control: Any) -> Site:
    return AdminSite(AdminRoot(control))
