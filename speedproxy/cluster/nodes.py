"""Node registration: each node renews a key with a TTL; the live ones are listed.

Every ``heartbeat`` a node writes ``<prefix>node:<name>`` (JSON: name,
instance, admin and proxy addresses, pid, version, start time, workers,
last beat), which expires after three beats, and adds its name to the
sorted set ``<prefix>nodes`` (scored by the beat's time).  A listing reads
the names from the set, then their keys: a name whose key has expired is a
node that stopped beating, and leaves the set.  A node that stops cleanly
deletes its key at once.

Two nodes given the same ``node_name`` overwrite each other's key; a node
that finds another instance's record under its name logs it once.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from speedproxy.cluster.link import RedisLink

log = Logger(namespace="speedproxy.cluster")

#: Missed beats after which a node is forgotten.
MISSED_BEATS = 3


class NodeRegistry:
    """Registers this node and lists the fleet."""

    def __init__(
        self,
        link: RedisLink,
        prefix: str,
        name: str,
        heartbeat: float,
        describe: Callable[[], Dict[str, Any]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self.prefix = prefix
        self.name = name
        self.heartbeat = heartbeat
        self.describe = describe
        self.clock = clock
        #: Tells this process from another one using the same name.
        self.instance = os.urandom(6).hex()
        #: Live nodes seen by the last beat (``None``: not known).
        self.count: Optional[int] = None
        self._warned_clash = False

    @property
    def set_key(self) -> str:
        return self.prefix + "nodes"

    def node_key(self, name: str) -> str:
        return f"{self.prefix}node:{name}"

    def record(self) -> Dict[str, Any]:
        record = dict(self.describe())
        record.update(name=self.name, instance=self.instance, seen=round(self.clock(), 3))
        return record

    @inlineCallbacks
    def beat(self) -> Any:
        """Renew this node's key; fires with the live nodes' count."""
        key = self.node_key(self.name)
        previous = yield self.link.call("GET", key)
        if previous and not self._warned_clash:
            try:
                other = json.loads(previous).get("instance")
            except (ValueError, AttributeError):
                other = None
            if other and other != self.instance:
                self._warned_clash = True
                log.warn("another node also calls itself {name!r}: give each node its own cluster.node_name", name=self.name)
        ttl_ms = int(self.heartbeat * MISSED_BEATS * 1000)
        yield self.link.call("SET", key, json.dumps(self.record()), "PX", ttl_ms)
        yield self.link.call("ZADD", self.set_key, self.clock(), self.name)
        nodes = yield self.nodes()
        self.count = len(nodes)
        return self.count

    @inlineCallbacks
    def nodes(self) -> Any:
        """The live nodes' records, by name."""
        names = yield self.link.call("ZRANGE", self.set_key, 0, -1)
        names = [name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name) for name in names or []]
        if not names:
            return []
        values = yield self.link.call("MGET", *[self.node_key(name) for name in names])
        live: List[Dict[str, Any]] = []
        gone = []
        now = self.clock()
        for name, value in zip(names, values):
            if value is None:
                gone.append(name)
                continue
            try:
                record = json.loads(value)
            except ValueError:
                gone.append(name)
                continue
            record["age_seconds"] = round(max(0.0, now - float(record.get("seen", now))), 3)
            record["self"] = name == self.name and record.get("instance") == self.instance
            live.append(record)
        if gone:
            yield self.link.call("ZREM", self.set_key, *gone)
        return sorted(live, key=lambda record: record["name"])

    def leave(self) -> Deferred:
        """Delete this node's key (a clean stop)."""
        key = self.node_key(self.name)
        return self.link.call("DEL", key).addCallback(lambda _: self.link.call("ZREM", self.set_key, self.name))
