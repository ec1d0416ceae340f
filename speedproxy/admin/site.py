"""The admin site: the resource tree on ``admin.listen``, its gate and audit log.

Paths (see README.rst, "Admin API")::

    /health /status /stats /upstream /metrics            open
    /dashboard[/app.js,/style.css]                        open (the page; its data calls use the key)
    /config /cache/{info,keys,search,clear}               TMDB proxy
    /api/v1/cache/{purge,warmup[/<id>]}
    /api/v1/sign                                          signed URLs (routing.*.signed_urls)
    /api/v1/sessions[/<id>]                               edge sessions (routing.*.sessions)
    /api/v1/cluster/nodes                                 the fleet (cluster.redis)
    /api/v1/hls/{warmup[/<id>],streams}
    /api/v1/config[/reload-ssl]                           SpeedMimi
    /api/v1/backends[/add,/update,/remove,/disconnect]
    /api/v1/stats/{server,backend}  /api/v1/report
    /api/v1/performance/{health,stats,dashboard,operations,active-requests,
                         slow-requests,resource-usage,alerts/thresholds}

Every request passes the site's *gate* before its handler: a body over
``admin.max_body_size`` gets 413, a protected endpoint without the right
``X-API-Key`` gets 401.  Every finished request is offered to the audit log
(:mod:`speedproxy.admin.audit`), which records mutating and refused calls.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Optional

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from speedproxy.admin.api_backends import (
    AddBackendResource,
    BackendsResource,
    DisconnectBackendResource,
    RemoveBackendResource,
    UpdateBackendResource,
)
from speedproxy.admin.api_cache import (
    CacheClearResource,
    CacheInfoResource,
    CacheKeysResource,
    CacheSearchResource,
)
from speedproxy.admin.api_cache_purge import CachePurgeResource
from speedproxy.admin.api_sign import SignResource
from speedproxy.admin.api_sessions import SessionsResource
from speedproxy.admin.api_cluster import ClusterNodesResource
from speedproxy.admin.api_cache_warmup import WarmupResource
from speedproxy.admin.api_hls import hls_namespace
from speedproxy.admin.api_config import ConfigResource, ReloadSSLResource, TMDBConfigResource
from speedproxy.admin.api_performance import (
    ActiveRequestsResource,
    DashboardResource,
    OperationsResource,
    PerformanceHealthResource,
    PerformanceStatsResource,
    ResourceUsageResource,
    SlowRequestsResource,
    ThresholdsResource,
)
from speedproxy.admin.api_stats import (
    BackendStatsResource,
    HealthResource,
    ReportResource,
    ServerStatsResource,
    StatusResource,
    UpstreamResource,
)
from speedproxy.admin.audit import audit_line
from speedproxy.admin.auth import HEADER
from speedproxy.admin.cache_warmup import WarmupJobs
from speedproxy.admin.cache_worker import fanout_of
from speedproxy.admin.cascade import Cascade
from speedproxy.admin.context import AdminContext
from speedproxy.admin.dashboard import DashboardPage
from speedproxy.admin.json_resource import APIError, Namespace, NotFoundResource
from speedproxy.admin.stats import MetricsResource, StatsResource


def _namespace(children: Mapping[bytes, Resource]) -> Namespace:
    node = Namespace()
    for name, child in children.items():
        node.putChild(name, child)
    return node


class AdminRoot(Resource):
    """Maps paths to resources; unknown paths get a JSON 404 (behind the key)."""

    def __init__(self, control: Any, api: Optional[AdminContext] = None) -> None:
        super().__init__()
        api = api if api is not None else AdminContext(control)
        self.api = api
        #: Forwards purges and clears to upstream speedproxies (cache.cascade_purge).
        self.cascade = Cascade(api.clock, admin_port=lambda: control.admin_port.getHost().port)
        #: Cache warm-up jobs, in this process's memory.
        self.warmups = WarmupJobs(lambda: fanout_of(control), api.clock)
        for name, child in {
            b"health": HealthResource(api),
            b"status": StatusResource(api),
            b"stats": StatsResource(control),
            b"upstream": UpstreamResource(api),
            b"metrics": MetricsResource(control),
            b"dashboard": DashboardPage(),
            b"config": TMDBConfigResource(api),
            b"cache": _namespace(
                {
                    b"info": CacheInfoResource(api),
                    b"keys": CacheKeysResource(api),
                    b"search": CacheSearchResource(api),
                    b"clear": CacheClearResource(api, self.cascade),
                }
            ),
        }.items():
            self.putChild(name, child)
        config = ConfigResource(api)
        config.putChild(b"reload-ssl", ReloadSSLResource(api))
        backends = BackendsResource(api)
        backends.putChild(b"add", AddBackendResource(api))
        backends.putChild(b"update", UpdateBackendResource(api))
        backends.putChild(b"remove", RemoveBackendResource(api))
        backends.putChild(b"disconnect", DisconnectBackendResource(api))
        performance = _namespace(
            {
                b"health": PerformanceHealthResource(api),
                b"stats": PerformanceStatsResource(api),
                b"dashboard": DashboardResource(api),
                b"operations": OperationsResource(api),
                b"active-requests": ActiveRequestsResource(api),
                b"slow-requests": SlowRequestsResource(api),
                b"resource-usage": ResourceUsageResource(api),
                b"alerts": _namespace({b"thresholds": ThresholdsResource(api)}),
            }
        )
        v1 = _namespace(
            {
                b"config": config,
                b"backends": backends,
                b"stats": _namespace({b"server": ServerStatsResource(api), b"backend": BackendStatsResource(api)}),
                b"report": ReportResource(api),
                b"sign": SignResource(api),
                b"performance": performance,
                b"sessions": SessionsResource(api),
                b"cluster": _namespace({b"nodes": ClusterNodesResource(api)}),
                b"cache": _namespace(
                    {
                        b"purge": CachePurgeResource(api, self.cascade),
                        b"warmup": WarmupResource(api, self.warmups),
                    }
                ),
                b"hls": _namespace(hls_namespace(api, control, self.warmups)),
            }
        )
        self.putChild(b"api", _namespace({b"v1": v1}))

    def getChild(self, path: bytes, request: Any) -> Resource:
        return NotFoundResource()

    def render(self, request: Any) -> Any:
        return NotFoundResource().render(request)


class AdminRequest(Request):
    """A request whose body is capped at ``admin.max_body_size``.

    Bytes past the limit are discarded as they arrive (never buffered); the
    gate then answers 413.
    """

    body_too_large = False
    _body_received = 0
    #: Why the key was refused (``missing_key`` / ``wrong_key``), for the audit line.
    audit_reason: Optional[str] = None
    #: What the call acted on when the path does not say (a purged URL), for the audit line.
    audit_note: Optional[str] = None

    def _body_limit(self) -> int:
        site = getattr(self.channel, "site", None)
        limit = getattr(site, "max_body_size", None)
        return int(limit()) if callable(limit) else 0

    def gotLength(self, length: Optional[int]) -> None:
        limit = self._body_limit()
        if length is not None and limit and length > limit:
            self.body_too_large = True
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_received += len(data)
        limit = self._body_limit()
        if limit and self._body_received > limit:
            self.body_too_large = True
            self.content = io.BytesIO()
            return
        super().handleContentChunk(data)


class AdminSite(Site):
    """The admin API's site: gate, audit log and the rate sampler's life."""

    noisy = False
    requestFactory = AdminRequest

    def __init__(self, root: AdminRoot, api: AdminContext) -> None:
        super().__init__(root)
        self.api = api
        self.displayTracebacks = False

    def max_body_size(self) -> int:
        return self.api.config.admin.max_body_size

    def gate(self, request: Any, resource: Any) -> Optional[APIError]:
        """Refuse ``request`` for ``resource`` (401, 413) or let it through (``None``)."""
        if not getattr(resource, "open", False):
            reason = self.api.checker.check(self.api.config.admin, request.getHeader(HEADER))
            if reason is not None:
                request.audit_reason = reason
                detail = "a valid X-API-Key header is required" if reason == "missing_key" else "the X-API-Key is wrong"
                return APIError(401, "unauthorized", detail, extra={"reason": reason})
        if getattr(request, "body_too_large", False):
            return APIError(
                413,
                "payload_too_large",
                f"the body is larger than admin.max_body_size ({self.max_body_size()} bytes)",
            )
        return None

    def getResourceFor(self, request: Any) -> Resource:
        finished = request.notifyFinish()
        finished.addCallbacks(
            lambda _: audit_line(
                request, request.code, getattr(request, "audit_reason", None), note=getattr(request, "audit_note", None)
            ),
            lambda _: audit_line(
                request, request.code, getattr(request, "audit_reason", None), aborted=True,
                note=getattr(request, "audit_note", None),
            ),
        )
        return super().getResourceFor(request)

    def log(self, request: Any) -> None:
        """Admin calls are audited (see :meth:`getResourceFor`); no access log here."""

    def startFactory(self) -> None:
        super().startFactory()
        self.api.sampler.start()

    def stopFactory(self) -> None:
        self.api.sampler.stop()
        super().stopFactory()

    def stop(self) -> None:
        """Stop background work (the rate sampler)."""
        self.api.sampler.stop()


def admin_site(control: Any, environ: Optional[Mapping[str, str]] = None, clock: Any = None) -> AdminSite:
    """The admin site driving ``control`` (a master or a single-process service)."""
    api = AdminContext(control, clock=clock, environ=environ)
    return AdminSite(AdminRoot(control, api), api)
