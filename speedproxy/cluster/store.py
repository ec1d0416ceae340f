"""The edge state of a fleet: token buckets and sessions in Redis, the host's as fallback.

:class:`FleetEdgeState` provides :class:`~speedproxy.edge.state.IEdgeState`
over a :class:`~speedproxy.cluster.link.RedisLink`, so that every worker of
every node spends the same buckets and knows the same sessions:

- **Token buckets**: one Lua script (:data:`TAKE`) refills and spends a
  bucket in one step, on Redis's clock (``TIME``), so nodes whose clocks
  differ agree.  A bucket is a hash ``<prefix>tb:<sha1(key)>`` that expires
  once it would be full again.
- **Sessions**: an id is ``F`` + base64url(client hash, expiry, random,
  HMAC) under a fleet secret kept in Redis (``<prefix>session-secret``,
  made once with ``SET NX``), so any node can tell a forged or expired id
  without asking.  Live sessions are keys ``<prefix>session:<id>`` (TTL the
  session's), indexed per client and in ``<prefix>sessions`` (sorted by
  expiry) for ``max_per_client`` and listings; opening one is a Lua script
  (count and add in one step).  A check asks only whether the id is
  revoked (the HMAC and expiry say the rest, so a Redis restarted empty
  ends no session; a node that knew the secret writes it back).  A
  revocation writes ``<prefix>revoked:<id>`` and is published on
  ``<prefix>revoked``: every worker subscribed forgets the session at once,
  and a worker that missed the message asks Redis again after at most
  :data:`RECHECK` seconds.
- **Redis unreachable**: every call answers from the host's store (the
  ``fallback``) instead: buckets count on this host only, new sessions are
  the host's, and a fleet session id is still accepted when its HMAC and
  expiry are good (this worker cannot learn of revocations meanwhile).
  The node's master logs one line when Redis goes and one when it is back
  (the workers' links are quiet); nothing a client sees fails because
  Redis did.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from zope.interface import implementer

from speedproxy.cluster.link import RedisDown, RedisLink
from speedproxy.edge.state import IEdgeState, Session, SessionLimitReached, SessionStatus, Take

log = Logger(namespace="speedproxy.cluster")

#: Seconds a worker trusts a session it found valid in Redis before asking again.
RECHECK = 1.0
#: Sessions remembered per worker (valid ones, and revoked ones).
REMEMBERED = 65536

TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 't', 's')
local tokens = tonumber(b[1])
local stamp = tonumber(b[2])
if tokens == nil or stamp == nil then
  tokens = burst
  stamp = now
end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = (1 - tokens) / rate
end
local reset = (burst - tokens) / rate
redis.call('HSET', KEYS[1], 't', tostring(tokens), 's', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(reset * 1000) + 1000)
return {allowed, tostring(tokens), tostring(retry), tostring(reset)}
"""

#: KEYS: session key, client index, all sessions; ARGV: id, record, ttl ms, expires, max, now.
OPEN = """
local now = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local max = tonumber(ARGV[5])
if max > 0 and redis.call('ZCARD', KEYS[2]) >= max then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
return 1
"""

_ID = struct.Struct(">4sI8s12s")  # client hash, expiry (unix s), random, MAC
_SIGNED = 16


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> Optional[bytes]:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        return None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@implementer(IEdgeState)
class FleetEdgeState:
    """Buckets and sessions in Redis through ``link``; ``fallback`` while it is away."""

    def __init__(
        self,
        link: RedisLink,
        fallback: Any,
        prefix: str = "speedproxy:",
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.link = link
        self.fallback = fallback
        self.prefix = prefix
        self.wall = wall
        self.monotonic = monotonic
        self.random = random
        self.secret: Optional[bytes] = None
        self._shas: Dict[str, str] = {}
        #: id → (expires, monotonic time it was last found valid in Redis).
        self._valid: Dict[str, Tuple[float, float]] = {}
        self._revoked: Dict[str, float] = {}
        #: Answers given by the fallback because Redis was away.
        self.fallbacks = 0
        link.subscribe(prefix + "revoked", self._heard_revocation)
        link.on_change(self._changed)
        if link.up:
            self._changed(True)

    # -- Redis plumbing ------------------------------------------------------------

    def _changed(self, up: bool) -> None:
        if up:
            self._shas.clear()
            self._load_secret()

    def _load_secret(self) -> Deferred:
        """Learn the fleet's session secret (a Redis that lost it gets ours back)."""
        key = self.prefix + "session-secret"
        offered = self.secret.decode("ascii") if self.secret is not None else _b64(self.random(32))
        done = self.link.call("SET", key, offered, "NX").addCallback(lambda _: self.link.call("GET", key))

        def keep(value: Any) -> None:
            if value:
                self.secret = _text(value).encode("ascii")

        return done.addCallbacks(keep, lambda failure: None)

    def _script(self, source: str, keys: List[str], args: List[Any]) -> Deferred:
        sha = self._shas.get(source)
        if sha is None:
            def loaded(value: Any) -> Deferred:
                self._shas[source] = _text(value)
                return self._script(source, keys, args)

            return self.link.call("SCRIPT", "LOAD", source).addCallback(loaded)

        def missing(failure: Any) -> Any:
            if "NOSCRIPT" in (failure.getErrorMessage() or ""):
                self._shas.pop(source, None)
                return self._script(source, keys, args)
            return failure

        return self.link.call("EVALSHA", sha, len(keys), *keys, *args).addErrback(missing)

    def _fall_back(self, failure: Any, answer: Callable[[], Any]) -> Any:
        """Answer from the host's store; log a Redis error that is not an outage."""
        if not failure.check(RedisDown):
            log.warn("redis edge state: {e}; answered from this host's state", e=failure.getErrorMessage())
        self.fallbacks += 1
        return answer()

    # -- token buckets -------------------------------------------------------------

    def take(self, key: bytes, rate: float, burst: float) -> Any:
        if not self.link.up:
            self.fallbacks += 1
            return self.fallback.take(key, rate, burst)
        bucket = self.prefix + "tb:" + hashlib.sha1(key).hexdigest()

        def taken(reply: Any) -> Take:
            allowed, tokens, retry, reset = reply
            tokens_left = float(_text(tokens))
            return Take(int(allowed) == 1, int(tokens_left) if int(allowed) == 1 else 0,
                        float(_text(retry)), float(_text(reset)))

        return self._script(TAKE, [bucket], [repr(float(rate)), repr(float(burst))]).addCallbacks(
            taken, lambda failure: self._fall_back(failure, lambda: self.fallback.take(key, rate, burst))
        )

    # -- sessions ------------------------------------------------------------------

    def _mac(self, body: bytes) -> bytes:
        assert self.secret is not None
        return hmac.new(self.secret, body, hashlib.sha256).digest()[:12]

    def _client_hash(self, client: str) -> bytes:
        return hashlib.sha256(client.encode("utf-8")).digest()[:4]

    def _parse(self, session_id: str) -> Optional[Tuple[bytes, int]]:
        """``(client hash, expiry)`` of a well-formed fleet id with a good MAC, else ``None``."""
        if not session_id.startswith("F") or self.secret is None:
            return None
        raw = _unb64(session_id[1:])
        if raw is None or len(raw) != _ID.size:
            return None
        client, expires, _, mac = _ID.unpack(raw)
        if not hmac.compare_digest(mac, self._mac(raw[:_SIGNED])):
            return None
        return client, expires

    def _key(self, session_id: str) -> str:
        return self.prefix + "session:" + session_id

    def open_session(self, client: str, ttl: float, max_per_client: int) -> Any:
        if self.link.up and self.secret is None:
            return self._load_secret().addCallback(lambda _: self._open(client, ttl, max_per_client))
        return self._open(client, ttl, max_per_client)

    def _open(self, client: str, ttl: float, max_per_client: int) -> Any:
        if not self.link.up or self.secret is None:
            self.fallbacks += 1
            return self.fallback.open_session(client, ttl, max_per_client)
        now = self.wall()
        expires = int(now + ttl) + 1
        body = struct.pack(">4sI8s", self._client_hash(client), expires, self.random(8))
        session_id = "F" + _b64(body + self._mac(body))
        session = Session(session_id, client, round(now, 3), float(expires))
        record = json.dumps(session.to_json())
        keys = [self._key(session_id), self.prefix + "client-sessions:" + client, self.prefix + "sessions"]
        args = [session_id, record, max(1, int((expires - now) * 1000)), expires, max_per_client, now]

        def opened(reply: Any) -> Session:
            if int(reply) != 1:
                raise SessionLimitReached(client, max_per_client)
            self._remember(session_id, float(expires))
            return session

        def failed(failure: Any) -> Any:
            if failure.check(SessionLimitReached):
                return failure
            return self._fall_back(failure, lambda: self.fallback.open_session(client, ttl, max_per_client))

        return self._script(OPEN, keys, args).addCallback(opened).addErrback(failed)

    def _remember(self, session_id: str, expires: float) -> None:
        if len(self._valid) >= REMEMBERED:
            self._valid.clear()
        self._valid[session_id] = (expires, self.monotonic())

    def check_session(self, session_id: str) -> Any:
        if self.secret is None and session_id.startswith("F") and self.link.up:
            # Just connected: learn the secret before telling a fleet id from a forged one.
            return self._load_secret().addCallback(lambda _: self._check(session_id))
        return self._check(session_id)

    def _check(self, session_id: str) -> Any:
        parsed = self._parse(session_id)
        if parsed is None:
            if session_id.startswith("F"):
                return SessionStatus.UNKNOWN
            return self.fallback.check_session(session_id)
        _, expires = parsed
        if session_id in self._revoked:
            return SessionStatus.REVOKED
        if expires <= self.wall():
            return SessionStatus.EXPIRED
        known = self._valid.get(session_id)
        if known is not None and self.monotonic() - known[1] < RECHECK:
            return SessionStatus.VALID
        if not self.link.up:
            self.fallbacks += 1
            return SessionStatus.VALID  # a good MAC and a future expiry: trusted until Redis is back
        return self.link.call("EXISTS", self.prefix + "revoked:" + session_id).addCallbacks(
            lambda revoked: self._found(session_id, float(expires), int(revoked)),
            lambda failure: self._fall_back(failure, lambda: SessionStatus.VALID),
        )

    def _found(self, session_id: str, expires: float, revoked: int) -> SessionStatus:
        """A good MAC, a future expiry: valid unless revoked (a Redis that lost
        the session's record, restarted empty, does not end it)."""
        if revoked:
            self._mark_revoked(session_id, expires)
            return SessionStatus.REVOKED
        self._remember(session_id, expires)
        return SessionStatus.VALID

    def _mark_revoked(self, session_id: str, expires: float) -> None:
        self._valid.pop(session_id, None)
        if len(self._revoked) >= REMEMBERED:
            now = self.wall()
            self._revoked = {key: until for key, until in self._revoked.items() if until > now}
        self._revoked[session_id] = expires

    def _heard_revocation(self, message: bytes) -> None:
        session_id = message.decode("ascii", "replace")
        parsed = self._parse(session_id)
        if parsed is not None:
            self._mark_revoked(session_id, float(parsed[1]))

    def revoke_session(self, session_id: str) -> Any:
        parsed = self._parse(session_id)
        if parsed is None:
            if session_id.startswith("F"):
                return False
            return self.fallback.revoke_session(session_id)
        remaining = int((parsed[1] - self.wall()) * 1000)
        if remaining <= 0:
            return False
        return self._revoke(session_id, float(parsed[1]), remaining)

    @inlineCallbacks
    def _revoke(self, session_id: str, expires: float, remaining: int) -> Any:
        """Mark it revoked (``False``: it already was), drop its record, tell every worker."""
        first = yield self.link.call("SET", self.prefix + "revoked:" + session_id, "1", "PX", remaining, "NX")
        record = yield self.link.call("GET", self._key(session_id))
        yield self.link.call("DEL", self._key(session_id))
        yield self.link.call("ZREM", self.prefix + "sessions", session_id)
        if record is not None:
            client = json.loads(record).get("client", "")
            yield self.link.call("ZREM", self.prefix + "client-sessions:" + client, session_id)
        yield self.link.publish(self.prefix + "revoked", session_id.encode("ascii"))
        self._mark_revoked(session_id, expires)
        return first is not None

    def list_sessions(self, client: Optional[str]) -> Any:
        if not self.link.up:
            return self.fallback.list_sessions(client)
        now = self.wall()
        index = self.prefix + ("client-sessions:" + client if client else "sessions")

        def records(ids: Any) -> Deferred:
            ids = [_text(item) for item in ids or []]
            if not ids:
                return succeed([])
            return self.link.call("MGET", *[self._key(item) for item in ids]).addCallback(sessions)

        def sessions(values: Any) -> List[Session]:
            found = []
            for value in values:
                if value is None:
                    continue
                data = json.loads(value)
                found.append(Session(data["id"], data["client"], data["created"], data["expires"]))
            return found

        def with_host(fleet: List[Session]) -> Any:
            host = self.fallback.list_sessions(client)
            if isinstance(host, Deferred):
                return host.addCallback(lambda more: fleet + list(more))
            return fleet + list(host)

        return self.link.call("ZRANGEBYSCORE", index, now, "+inf").addCallback(records).addCallback(with_host)


def fleet_state_for(core: Any) -> Any:
    """The fleet store of a worker's ``core`` (``cluster.redis`` set), made once.

    The worker's own link to Redis is started here; the host's store is
    the fallback.
    """
    from speedproxy.edge.host_state import host_edge_for

    store = getattr(core, "_fleet_state", None)
    if store is None:
        config = core.config
        from speedproxy.cluster.address import parse_redis_address

        link = RedisLink(
            core.reactor, parse_redis_address(config.cluster.redis), timeout=config.cluster.timeout, quiet=True
        )
        store = FleetEdgeState(link, host_edge_for(core).state, config.cluster.key_prefix)
        link.start()
        core._fleet_state = store
    return store

