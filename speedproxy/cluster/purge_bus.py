"""Cache purges and clears carried to every node of the fleet (Redis pub/sub).

:class:`FleetCacheFanout` wraps a node's own cache fan-out (the control's
``cache_fanout``, :mod:`speedproxy.admin.cache_worker`): a ``purge`` or
``clear`` that succeeds on this node is then published on
``<prefix>cache``.  Every other node's :class:`PurgeBus` hears it and runs
it on its *own* fan-out, the unwrapped one, so a purge received is never
published again (no loop, whatever the fleet's shape); a node ignores its
own messages and any message id it has already run.

The admin API's purge and clear calls need no change: they use whatever
fan-out the control has.
"""

from __future__ import annotations

import json
import os
from collections import deque
from typing import Any, Deque, Dict, List, Set

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from speedproxy.cluster.link import RedisLink

log = Logger(namespace="speedproxy.cluster")

#: The actions carried to the fleet.
FLEET_ACTIONS = ("purge", "clear")
#: Message ids remembered, against a message heard twice.
REMEMBERED = 1024


class PurgeBus:
    """Publishes this node's purges and runs the other nodes' ones."""

    def __init__(self, link: RedisLink, prefix: str, node: str, instance: str, local: Any) -> None:
        self.link = link
        self.channel = prefix + "cache"
        self.node = node
        self.instance = instance
        #: This node's own fan-out (never the fleet one).
        self.local = local
        self._seen: Deque[str] = deque(maxlen=REMEMBERED)
        self._seen_set: Set[str] = set()
        self.published = 0
        self.received = 0
        link.subscribe(self.channel, self.heard)

    def _remember(self, message_id: str) -> bool:
        """False when ``message_id`` was already seen."""
        if message_id in self._seen_set:
            return False
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(message_id)
        self._seen_set.add(message_id)
        return True

    def publish(self, action: str, arguments: Dict[str, Any]) -> Deferred:
        """Tell the other nodes; fires with how many nodes' subscribers heard it."""
        message_id = os.urandom(8).hex()
        self._remember(message_id)
        body = {"id": message_id, "node": self.node, "instance": self.instance, "action": action,
                "arguments": arguments}
        self.published += 1
        return self.link.publish(self.channel, json.dumps(body).encode("utf-8"))

    def heard(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            action = message["action"]
            arguments = message["arguments"]
            message_id = str(message["id"])
        except (ValueError, KeyError, TypeError):
            log.warn("ignored a malformed fleet cache message: {data!r}", data=data[:200])
            return
        if message.get("instance") == self.instance or action not in FLEET_ACTIONS or not isinstance(arguments, dict):
            return
        if not self._remember(message_id):
            return
        self.received += 1
        arguments = {str(key): value for key, value in arguments.items() if key in ("url", "prefix", "tier")}

        def done(rows: List[Dict[str, Any]]) -> None:
            errors = [row for row in rows if "error" in row]
            count = sum(row.get("result", 0) or 0 for row in rows if isinstance(row.get("result"), int))
            log.info(
                "cache {action} from node {node} ({arguments}): {count} object(s) dropped here{errors}",
                action=action, node=message.get("node"), arguments=arguments, count=count,
                errors=f", {len(errors)} worker(s) failed" if errors else "",
            )

        self.local.each(action, **arguments).addCallbacks(
            done, lambda failure: log.error("fleet cache {action} failed here: {e}", action=action, e=failure.getErrorMessage())
        )


class FleetCacheFanout:
    """A node's cache fan-out that also tells the fleet about purges and clears."""

    def __init__(self, local: Any, bus: PurgeBus) -> None:
        self.local = local
        self.bus = bus

    def each(self, action: str, **arguments: Any) -> Deferred:
        done = self.local.each(action, **arguments)
        if action not in FLEET_ACTIONS:
            return done

        def tell(rows: Any) -> Any:
            if any("refused" in row for row in rows if isinstance(row, dict)):
                return rows  # bad arguments: nothing to carry
            self.bus.publish(action, arguments).addErrback(
                lambda failure: log.warn(
                    "cache {action} not carried to the fleet (Redis: {e})", action=action, e=failure.getErrorMessage()
                )
            )
            return rows

        return done.addCallback(tell)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)
