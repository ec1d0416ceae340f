"""The edge state seam: token buckets and sessions every worker agrees on.

**This interface is the seam for** :mod:`speedproxy.cluster`: the rate
limit and session filters (:mod:`speedproxy.edge.rate_limit`,
:mod:`speedproxy.edge.sessions`) and the admin API
(:mod:`speedproxy.admin.api_sessions`) only talk to an :class:`IEdgeState`.
:class:`speedproxy.edge.host_state.HostEdgeState` keeps the state in a
shared-memory file used by every worker of one host; a Redis implementation
(``cluster.redis``) provides the same interface so that every node of a
fleet shares it, falling back to the host one when Redis is unreachable.
To plug it in, :mod:`speedproxy.cluster` sets ``core.edge_state`` on each
worker's core before its routes are built (:func:`edge_state_for`) and
``control.edge_state`` on the master (the admin API's
:func:`speedproxy.admin.api_sessions.store_of`); without them the host
store is used.

Every method may return its value directly (the host store answers at
once) or a ``Deferred`` firing with it (a network store); callers accept
both.  A failure of the store itself is never the
client's fault: the filters let the request through and log it.

Keys are bytes chosen by the caller (the rate-limit filter uses
``route NUL kind NUL value``); a store may hash them.  Session ids are URL-
and cookie-safe ASCII strings made by the store.

Connection counts (:mod:`speedproxy.edge.connection_limit`) are per host on
purpose (as nginx's ``limit_conn`` zone is): they are not in this interface.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, List, NamedTuple, Optional, Union

from twisted.internet.defer import Deferred
from zope.interface import Interface

class Take(NamedTuple):
    """The answer of :meth:`IEdgeState.take`: was one token there?

    (A named tuple: made on every limited request, it must be cheap.)
    """

    allowed: bool
    #: Whole tokens left after this request (0 when refused).
    remaining: int
    #: Seconds until one token is back (0.0 when allowed).
    retry_after: float
    #: Seconds until the bucket is full again.
    reset: float


class SessionStatus(enum.Enum):
    """What :meth:`IEdgeState.check_session` found for a session id."""

    VALID = "valid"
    #: Never created here, or forgotten (its slot was reused after it expired).
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Session:
    """A session as the store hands it out and lists it."""

    #: The token a client presents (cookie or query parameter).
    id: str
    #: The client IP it was opened for (text form).
    client: str
    #: Unix times.
    created: float
    expires: float
    #: The realm it opens (``sessions.realm``, by default the route's name);
    #: empty when the store cannot say (the host's keeps only a hash of it).
    realm: str = ""

    def to_json(self) -> dict:
        found = {"id": self.id, "client": self.client, "created": self.created, "expires": self.expires}
        if self.realm:
            found["realm"] = self.realm
        return found


class SessionLimitReached(Exception):
    """The client already has ``max_per_client`` live sessions."""

    def __init__(self, client: str, limit: int) -> None:
        super().__init__(f"client {client} already has {limit} live session(s)")
        self.client = client
        self.limit = limit


class SessionStoreFull(Exception):
    """Every record a client's sessions may use holds another live session
    (the store's fault, not the client's: the API answers 503)."""

    def __init__(self, client: str) -> None:
        super().__init__(f"no room for another session of client {client} (the host's session table is full there)")
        self.client = client


class IEdgeState(Interface):
    """Token buckets and sessions shared by every worker (and node)."""

    def take(key: bytes, rate: float, burst: float) -> "Union[Take, Deferred]":
        """Take one token from the bucket ``key``.

        The bucket holds at most ``burst`` tokens, refills at ``rate`` tokens
        a second and starts full.  Returns a :class:`Take`.
        """

    def open_session(
        client: str, ttl: float, max_per_client: int, realm: str = "", reuse: bytes = b""
    ) -> "Union[Session, Deferred]":
        """Start a session of ``realm`` for ``client`` (an IP address) lasting ``ttl`` seconds.

        ``reuse``: when not empty, a live session of the same client and
        realm opened with the same ``reuse`` is handed back instead of a new
        one (a player without cookies sending signed URLs of one issue).

        :raises SessionLimitReached: (or fails with it) when the client
            already has ``max_per_client`` live sessions.
        :raises SessionStoreFull: (or fails with it) when the store has no
            room for it.
        """

    def check_session(
        session_id: str, realm: Optional[str] = None, client: Optional[str] = None
    ) -> "Union[SessionStatus, Deferred]":
        """Is ``session_id`` a live session (of ``realm``, and opened for
        ``client``, when given)?  A session of another realm or client is
        :attr:`SessionStatus.UNKNOWN`.  Cheap: asked on every request."""

    def revoke_session(session_id: str) -> "Union[bool, Deferred]":
        """End a session at once for every worker (and node).

        Returns ``False`` when no such live session exists.
        """

    def list_sessions(client: Optional[str]) -> "Union[List[Session], Deferred]":
        """The live sessions (of ``client`` only, when given), for the admin API."""


def edge_state_for(core: Any) -> IEdgeState:
    """The store the edge filters of a worker's ``core`` use.

    The fleet's, when :mod:`speedproxy.cluster` has put one on the core
    (``core.edge_state``: an :class:`IEdgeState` that falls back to the host's
    by itself when Redis is away), else the host's shared-memory one.
    """
    store = getattr(core, "edge_state", None)
    if store is not None:
        return store
    if getattr(getattr(getattr(core, "config", None), "cluster", None), "redis", ""):
        from speedproxy.cluster.store import fleet_state_for

        return fleet_state_for(core)
    from speedproxy.edge.host_state import host_edge_for

    return host_edge_for(core).state
