"""The edge state of a fleet: token buckets and sessions in Redis, the host's as fallback.

:class:`FleetEdgeState` provides :class:`~speedproxy.edge.state.IEdgeState`
over a :class:`~speedproxy.cluster.link.RedisLink`, so that every worker of
every node spends the same buckets and knows the same sessions:

- **Token buckets**: one Lua script (:data:`TAKE`) refills and spends a
  bucket in one step, on Redis's clock (``TIME``), so nodes whose clocks
  differ agree.  A bucket is a hash ``<prefix>tb:<sha1(key)>`` that expires
  once it would be full again.
- **Sessions**: an id is ``F`` + base64url(client hash, realm hash,
  expiry, random, HMAC) under a fleet secret kept in Redis
  (``<prefix>session-secret``, made once with ``SET NX``), so any node can
  tell a forged or expired id, or one of another realm or client, without
  asking.  A worker never drops a secret it knew: when Redis holds another
  one (it was emptied and another worker got there first) the worker signs
  with Redis's but still accepts its own, and every secret known is kept in
  ``<prefix>session-secrets`` for the others to learn (on connecting, and
  when an id none of its secrets signed comes in, at most every
  :data:`RELEARN` seconds), so no live session becomes unknown.  Live sessions are keys ``<prefix>session:<id>`` (TTL the
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

#: Secrets a worker accepts at most (its signing one first).
ACCEPTED = 8
#: Seconds between two looks at ``<prefix>session-secrets`` prompted by an id no known secret signed.
RELEARN = 10.0

#: KEYS: session key, client index, all sessions, reuse key;
#: ARGV: id, record, ttl ms, expires, max, now, session key prefix, reuse ("1": look the reuse key up).
OPEN = """
local now = tonumber(ARGV[6])
if ARGV[8] == '1' then
  local again = redis.call('GET', KEYS[4])
  if again then
    local id = cjson.decode(again)['id']
    if id and redis.call('EXISTS', ARGV[7] .. id) == 1 then
      return again
    end
  end
end
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
if ARGV[8] == '1' then
  redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3])
end
return 1
"""

_ID = struct.Struct(">4s4sI8s12s")  # client hash, realm hash, expiry (unix s), random, MAC
_SIGNED = 20


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
        #: The secret new session ids are signed with (Redis's).
        self.secret: Optional[bytes] = None
        #: Every secret whose ids are accepted (:data:`ACCEPTED` at most, ``secret`` first).
        self.secrets: List[bytes] = []
        self._relearnt: Optional[float] = None
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
        """Learn the fleet's session secret (a Redis that lost it gets ours back).

        A secret this worker knew is never dropped: when Redis holds another
        one, ids are signed with Redis's from now on and both are accepted;
        the secrets known are added to ``<prefix>session-secrets`` and the
        others' learnt from it.
        """
        key = self.prefix + "session-secret"
        everyone = self.prefix + "session-secrets"
        offered = self.secret.decode("ascii") if self.secret is not None else _b64(self.random(32))
        done = self.link.call("SET", key, offered, "NX").addCallback(lambda _: self.link.call("GET", key))

        def keep(value: Any) -> Deferred:
            if value:
                self._adopt(_text(value).encode("ascii"))
            return self.link.call("SADD", everyone, *[item.decode("ascii") for item in self.secrets]).addCallback(
                lambda _: self.link.call("SMEMBERS", everyone)
            )

        def learn(values: Any) -> None:
            for value in values or ():
                self._accept(_text(value).encode("ascii"))

        return done.addCallback(keep).addCallbacks(learn, lambda failure: None)

    def _adopt(self, secret: bytes) -> None:
        """Sign with ``secret`` (Redis's); the one signed with until now stays accepted."""
        if self.secret is not None and secret != self.secret:
            log.warn(
                "redis holds another session secret than this worker's (was it emptied?): new sessions use "
                "Redis's, the sessions made under this worker's stay valid"
            )
        self.secret = secret
        self.secrets = [secret] + [item for item in self.secrets if item != secret][: ACCEPTED - 1]

    def _accept(self, secret: bytes) -> None:
        if secret and secret not in self.secrets and len(self.secrets) < ACCEPTED:
            self.secrets.append(secret)

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

    def _mac(self, body: bytes, secret: Optional[bytes] = None) -> bytes:
        secret = secret or self.secret
        assert secret is not None
        return hmac.new(secret, body, hashlib.sha256).digest()[:12]

    def _client_hash(self, client: str) -> bytes:
        return hashlib.sha256(client.encode("utf-8")).digest()[:4]

    @staticmethod
    def _realm_hash(realm: str) -> bytes:
        return hashlib.sha256(b"realm\0" + realm.encode("utf-8")).digest()[:4]

    def _parse(self, session_id: str) -> Optional[Tuple[bytes, int, bytes]]:
        """``(client hash, expiry, realm hash)`` of a well-formed fleet id with a good MAC, else ``None``."""
        if not session_id.startswith("F") or not self.secrets:
            return None
        raw = _unb64(session_id[1:])
        if raw is None or len(raw) != _ID.size:
            return None
        client, realm, expires, _, mac = _ID.unpack(raw)
        body = raw[:_SIGNED]
        if not any(hmac.compare_digest(mac, self._mac(body, secret)) for secret in self.secrets):
            return None
        return client, expires, realm

    def _key(self, session_id: str) -> str:
        return self.prefix + "session:" + session_id

    def open_session(self, client: str, ttl: float, max_per_client: int, realm: str = "", reuse: bytes = b"") -> Any:
        if self.link.up and self.secret is None:
            return self._load_secret().addCallback(lambda _: self._open(client, ttl, max_per_client, realm, reuse))
        return self._open(client, ttl, max_per_client, realm, reuse)

    def _open(self, client: str, ttl: float, max_per_client: int, realm: str, reuse: bytes) -> Any:
        def on_host() -> Any:
            return self.fallback.open_session(client, ttl, max_per_client, realm, reuse)

        if not self.link.up or self.secret is None:
            self.fallbacks += 1
            return on_host()
        now = self.wall()
        expires = int(now + ttl) + 1
        body = struct.pack(">4s4sI8s", self._client_hash(client), self._realm_hash(realm), expires, self.random(8))
        session_id = "F" + _b64(body + self._mac(body))
        session = Session(session_id, client, round(now, 3), float(expires), realm)
        record = json.dumps(session.to_json())
        again = hashlib.sha256(b"\0".join((client.encode("utf-8"), realm.encode("utf-8"), reuse))).hexdigest()
        keys = [
            self._key(session_id), self.prefix + "client-sessions:" + client, self.prefix + "sessions",
            self.prefix + "session-reuse:" + again,
        ]
        args = [
            session_id, record, max(1, int((expires - now) * 1000)), expires, max_per_client, now,
            self.prefix + "session:", "1" if reuse else "0",
        ]

        def opened(reply: Any) -> Session:
            if isinstance(reply, (bytes, str)) and not _text(reply).isdigit():
                data = json.loads(reply)  # the live session of the same signed link
                found = Session(data["id"], data["client"], data["created"], data["expires"], data.get("realm", ""))
                self._remember(found.id, float(found.expires))
                return found
            if int(reply) != 1:
                raise SessionLimitReached(client, max_per_client)
            self._remember(session_id, float(expires))
            return session

        def failed(failure: Any) -> Any:
            if failure.check(SessionLimitReached):
                return failure
            return self._fall_back(failure, on_host)

        return self._script(OPEN, keys, args).addCallback(opened).addErrback(failed)

    def _remember(self, session_id: str, expires: float) -> None:
        if len(self._valid) >= REMEMBERED:
            self._valid.clear()
        self._valid[session_id] = (expires, self.monotonic())

    def check_session(self, session_id: str, realm: Optional[str] = None, client: Optional[str] = None) -> Any:
        if self.secret is None and session_id.startswith("F") and self.link.up:
            # Just connected: learn the secret before telling a fleet id from a forged one.
            return self._load_secret().addCallback(lambda _: self._check(session_id, realm, client))
        return self._check(session_id, realm, client)

    def _check(self, session_id: str, realm: Optional[str] = None, client: Optional[str] = None) -> Any:
        parsed = self._parse(session_id)
        if parsed is None:
            if session_id.startswith("F"):
                if self._may_relearn():  # signed under a secret another worker knows?
                    return self._load_secret().addCallback(lambda _: self._check_known(session_id, realm, client))
                return SessionStatus.UNKNOWN
            return self.fallback.check_session(session_id, realm, client)
        return self._check_parsed(session_id, parsed, realm, client)

    def _may_relearn(self) -> bool:
        """Look at the fleet's secrets again? (At most once per :data:`RELEARN`: forged ids cost nothing.)"""
        if not self.link.up:
            return False
        now = self.monotonic()
        if self._relearnt is not None and now - self._relearnt < RELEARN:
            return False
        self._relearnt = now
        return True

    def _check_known(self, session_id: str, realm: Optional[str], client: Optional[str]) -> Any:
        parsed = self._parse(session_id)
        if parsed is None:
            return SessionStatus.UNKNOWN
        return self._check_parsed(session_id, parsed, realm, client)

    def _check_parsed(
        self, session_id: str, parsed: Tuple[bytes, int, bytes], realm: Optional[str], client: Optional[str]
    ) -> Any:
        client_hash, expires, realm_hash = parsed
        if realm is not None and realm_hash != self._realm_hash(realm):
            return SessionStatus.UNKNOWN  # another realm's session does not open this route
        if client is not None and client_hash != self._client_hash(client):
            return SessionStatus.UNKNOWN
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
                found.append(Session(data["id"], data["client"], data["created"], data["expires"], data.get("realm", "")))
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
        from speedproxy.cluster.address import redis_address_of

        link = RedisLink(
            core.reactor, redis_address_of(config.cluster.redis), timeout=config.cluster.timeout, quiet=True
        )
        store = FleetEdgeState(link, host_edge_for(core).state, config.cluster.key_prefix)
        link.start()
        core._fleet_state = store
    return store

