"""``/api/v1/sessions``: start, list and revoke client sessions (:mod:`speedproxy.edge.sessions`).

* ``POST /api/v1/sessions`` ``{"client": "203.0.113.7", "route": "video"}``
  (or ``"realm": "tv"``): 201 with the new session (``id``, ``client``,
  ``created``, ``expires``, ``route``, ``realm``, ``cookie``: the
  ``Set-Cookie`` value to hand on, ``query``: the query parameter).  The
  session opens the routes of the route's realm (``sessions.realm``, by
  default the route's name) and no other.  ``route`` may be left out when
  one route has ``sessions``; given a ``realm``, the first route of that
  realm (by name) says the settings.  Its ``ttl`` and ``max_per_client``
  apply (``ttl`` in the body may shorten it).  A client at
  ``max_per_client`` gets 429; a session store with no room left, 503
  ``session_store_full``.
* ``GET /api/v1/sessions[?client=...]``: the live sessions.
* ``DELETE /api/v1/sessions/<id>``: revoke it; every worker refuses it from
  its next request on (404 when no such live session exists).

The store is the one the workers' filters use
(:func:`speedproxy.edge.state.edge_state_for`): the host's shared-memory
table, or the fleet's when :mod:`speedproxy.cluster` put one on the control.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, Optional, Tuple

from twisted.internet.defer import maybeDeferred
from twisted.web.resource import Resource
from twisted.web.server import Request

from speedproxy.admin.context import AdminContext, APIResource
from speedproxy.admin.json_resource import APIError, NotFoundResource, bad_request, not_found, query, read_json_object
from speedproxy.config.model import SessionsConfig
from speedproxy.config.units import parse_duration
from speedproxy.edge.state import IEdgeState, Session, SessionLimitReached, SessionStoreFull

_BODY_KEYS = ("client", "route", "realm", "ttl")


def store_of(control: Any) -> IEdgeState:
    """The edge state store the admin API of ``control`` works on."""
    store = getattr(control, "edge_state", None)
    if store is not None:
        return store
    core = getattr(control, "core", None)
    if core is not None:  # serving in one process
        from speedproxy.edge.state import edge_state_for

        return edge_state_for(core)
    segment = getattr(control, "segment", None)
    if segment is None or not segment.path:
        raise APIError(503, "not_ready", "the proxy is not serving yet: no session store")
    from speedproxy.edge.host_state import host_edge_for_master

    store = host_edge_for_master(segment.path)
    control.edge_state = store
    return store


def realm_of(route: str, settings: SessionsConfig) -> str:
    """The realm whose sessions open ``route``."""
    return settings.realm or route


def _realm_sessions(api: AdminContext, realm: Any) -> Tuple[str, SessionsConfig]:
    routes = sorted(
        (route, config.sessions) for route, config in api.config.routing.items()
        if config.sessions is not None and realm_of(route, config.sessions) == realm
    )
    if not isinstance(realm, str) or not routes:
        known = sorted({realm_of(route, config.sessions) for route, config in api.config.routing.items()
                        if config.sessions is not None})
        raise bad_request(f"no route has sessions of realm {realm!r} (realms: {', '.join(known) or 'none'})", "realm")
    return routes[0]


def _route_sessions(api: AdminContext, name: Optional[str]) -> Tuple[str, SessionsConfig]:
    routes = {route: config.sessions for route, config in api.config.routing.items() if config.sessions is not None}
    if name is None:
        if len(routes) != 1:
            known = ", ".join(sorted(routes)) or "none"
            raise bad_request(f"give the route whose sessions settings apply (routes with sessions: {known})", "route")
        return next(iter(routes.items()))
    if not isinstance(name, str) or name not in routes:
        known = ", ".join(sorted(routes)) or "none"
        raise bad_request(f"route {name!r} has no sessions (routes with sessions: {known})", "route")
    return name, routes[name]


class SessionsResource(APIResource):
    """``POST`` a session, ``GET`` the live ones; ``/<id>`` is one of them."""

    isLeaf = False

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        if len(path) > 64:
            return NotFoundResource()
        return SessionResource(self.api, path.decode("latin-1"))

    def json_GET(self, request: Request) -> Any:
        client = query(request, "client")
        result = maybeDeferred(store_of(self.api.control).list_sessions, client)
        return result.addCallback(lambda found: {"sessions": [session.to_json() for session in found]})

    def json_POST(self, request: Request) -> Any:
        body = read_json_object(request)
        for key in body:
            if key not in _BODY_KEYS:
                raise bad_request(f"unknown key {key!r} (give client, and route or realm, or ttl if needed)", key)
        client = body.get("client")
        if not isinstance(client, str):
            raise bad_request("client must be the client's IP address", "client")
        try:
            client = str(ipaddress.ip_address(client))
        except ValueError:
            raise bad_request(f"client must be an IP address, got {client!r}", "client") from None
        if "realm" in body and "route" in body:
            raise bad_request("give route or realm, not both", "realm")
        if "realm" in body:
            route, settings = _realm_sessions(self.api, body["realm"])
        else:
            route, settings = _route_sessions(self.api, body.get("route"))
        realm = realm_of(route, settings)
        ttl = settings.ttl
        if "ttl" in body:
            try:
                ttl = parse_duration(body["ttl"])
            except (TypeError, ValueError) as error:
                raise bad_request(f"ttl: {error}", "ttl") from None
            if not 0 < ttl <= settings.ttl:
                raise bad_request(f"ttl must be more than 0 and at most the route's ({settings.ttl:g}s)", "ttl")
        result = maybeDeferred(store_of(self.api.control).open_session, client, ttl, settings.max_per_client, realm)

        def opened(session: Session) -> Tuple[int, Dict[str, Any]]:
            request.audit_note = f"session={session.id[:8]}... client={client}"  # type: ignore[attr-defined]
            answer = session.to_json()
            answer["route"] = route
            answer["realm"] = realm
            answer["cookie"] = f"{settings.cookie}={session.id}; Path=/; Max-Age={int(ttl)}; HttpOnly; SameSite=Lax"
            answer["query"] = f"{settings.cookie}={session.id}"
            return 201, answer

        def refused(failure: Any) -> None:
            if failure.check(SessionStoreFull):
                raise APIError(503, "session_store_full", str(failure.value))
            failure.trap(SessionLimitReached)
            raise APIError(429, "too_many_sessions", str(failure.value), field="client")

        return result.addCallbacks(opened, refused)


class SessionResource(APIResource):
    """``GET`` (is it live?) or ``DELETE`` (revoke) one session."""

    def __init__(self, api: AdminContext, session_id: str) -> None:
        super().__init__(api)
        self.session_id = session_id

    def json_GET(self, request: Request) -> Any:
        result = maybeDeferred(store_of(self.api.control).check_session, self.session_id)
        return result.addCallback(lambda status: {"id": self.session_id, "status": status.value})

    def json_DELETE(self, request: Request) -> Any:
        request.audit_note = f"session={self.session_id[:8]}..."  # type: ignore[attr-defined]
        result = maybeDeferred(store_of(self.api.control).revoke_session, self.session_id)

        def revoked(done: bool) -> Dict[str, Any]:
            if not done:
                raise not_found(f"no live session {self.session_id!r}", "id")
            return {"id": self.session_id, "revoked": True}

        return result.addCallback(revoked)
