"""This node's place in the fleet (``cluster.redis``), run by the master.

:class:`FleetNode` owns the master's :class:`~speedproxy.cluster.link.RedisLink`
and, on it, the heartbeat (:mod:`speedproxy.cluster.nodes`) and the cache
purge bus (:mod:`speedproxy.cluster.purge_bus`).  It answers the admin
API's ``GET /api/v1/cluster/nodes``, adds ``speedproxy_cluster_nodes`` and
``speedproxy_redis_up`` to ``/metrics``, and gives ``/health`` its reason
to say ``degraded`` while Redis is unreachable (the node keeps serving with
the host's own state meanwhile).

The workers hold their own links for the shared limits and sessions
(:mod:`speedproxy.cluster.store`); this one serves the node as a whole.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from speedproxy import __version__
from speedproxy.cluster.address import redis_address_of
from speedproxy.cluster.link import RedisLink
from speedproxy.cluster.nodes import NodeRegistry
from speedproxy.cluster.purge_bus import FleetCacheFanout, PurgeBus
from speedproxy.config import Config

log = Logger(namespace="speedproxy.cluster")


def node_name(config: Config) -> str:
    """``cluster.node_name``, or the host name."""
    return config.cluster.node_name or socket.gethostname()


class FleetNode:
    """Heartbeat, fleet-wide purges and Redis state of one node."""

    def __init__(self, reactor: Any, config: Config, control: Any, describe: Callable[[], Dict[str, Any]]) -> None:
        cluster = config.cluster
        self.reactor = reactor
        self.control = control
        self.config = cluster
        self.name = node_name(config)
        self.address = redis_address_of(cluster.redis)
        self.link = RedisLink(reactor, self.address, timeout=cluster.timeout, name=f"speedproxy-{self.name}")
        self.registry = NodeRegistry(self.link, cluster.key_prefix, self.name, cluster.heartbeat, describe)
        self.local_fanout = control.cache_fanout
        self.bus = PurgeBus(self.link, cluster.key_prefix, self.name, self.registry.instance, self.local_fanout)
        self._beat = LoopingCall(self._heartbeat)
        self._beat.clock = reactor
        #: When Redis was last found unreachable (``None``: it is up).
        self.down_since: Optional[float] = time.time()
        #: Times the link went down.
        self.outages = 0
        self.link.on_change(self._changed)

    def start(self) -> None:
        self.control.cache_fanout = FleetCacheFanout(self.local_fanout, self.bus)
        self.link.start()
        self._beat.start(self.config.heartbeat, now=False)

    def stop(self) -> Deferred:
        if self._beat.running:
            self._beat.stop()
        self.control.cache_fanout = self.local_fanout
        left = self.registry.leave() if self.link.up else succeed(None)

        def close(_: Any) -> None:
            self.link.stop()

        return left.addBoth(close)

    def _changed(self, up: bool) -> None:
        if up:
            self.down_since = None
            self._heartbeat()
        else:
            if self.down_since is None:
                self.outages += 1
            self.down_since = time.time()
            self.registry.count = None

    def _heartbeat(self) -> None:
        if not self.link.up:
            return
        self.registry.beat().addErrback(lambda failure: log.debug("heartbeat: {e}", e=failure.getErrorMessage()))

    # -- what the admin API shows --------------------------------------------------

    def nodes(self) -> Deferred:
        """``GET /api/v1/cluster/nodes``'s body (fails with ``RedisDown``)."""

        def body(nodes: List[Dict[str, Any]]) -> Dict[str, Any]:
            return {
                "node": self.name,
                "redis": self.summary(),
                "nodes": nodes,
                "count": len(nodes),
            }

        return self.registry.nodes().addCallback(body)

    def summary(self) -> Dict[str, Any]:
        return {
            "address": self.address.describe(),
            "up": self.link.up,
            "server": self.link.server if self.link.up else None,
            "down_since": self.down_since,
            "last_error": self.link.last_error or None,
            "outages": self.outages,
        }

    def degraded(self) -> List[str]:
        """Why the fleet state is not shared now (empty: it is)."""
        if self.link.up:
            return []
        why = self.link.last_error or "not connected"
        return [f"redis {self.address.describe()} unreachable ({why}): limits and sessions are this host's own"]

    def metrics_text(self) -> bytes:
        up = 1 if self.link.up else 0
        count = self.registry.count if self.registry.count is not None else 0
        return (
            "# HELP speedproxy_redis_up Whether this node reaches the fleet's Redis (cluster.redis).\n"
            "# TYPE speedproxy_redis_up gauge\n"
            f'speedproxy_redis_up{{node="{_label(self.name)}"}} {up}\n'
            "# HELP speedproxy_cluster_nodes Live nodes of the fleet, as this node last saw them (0: Redis unreachable).\n"
            "# TYPE speedproxy_cluster_nodes gauge\n"
            f'speedproxy_cluster_nodes{{node="{_label(self.name)}"}} {count}\n'
            "# HELP speedproxy_redis_outages_total Times this node lost Redis.\n"
            "# TYPE speedproxy_redis_outages_total counter\n"
            f'speedproxy_redis_outages_total{{node="{_label(self.name)}"}} {self.outages}\n'
        ).encode("utf-8")


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def describe_master(master: Any) -> Callable[[], Dict[str, Any]]:
    """What a node's record says of the master ``master`` (or a single-process service)."""

    def describe() -> Dict[str, Any]:
        config = master.config
        workers = getattr(master, "workers", None)
        return {
            "admin": config.admin.listen,
            "listen": f"{config.server.host}:{config.server.port}",
            "pid": os.getpid(),
            "version": __version__,
            "started": round(getattr(master, "started_at", 0.0), 3),
            "workers": len(workers) if isinstance(workers, dict) else 1,
            "config_version": getattr(master, "config_version", 0),
        }

    return describe


def start_fleet(master: Any) -> Optional[FleetNode]:
    """Join the fleet when ``cluster.redis`` is set; ``None`` otherwise."""
    if not master.config.cluster.redis:
        return None
    fleet = FleetNode(master.reactor, master.config, master, describe_master(master))
    fleet.start()
    stats_path = getattr(master, "_stats_path", "")
    if stats_path and getattr(master, "edge_state", None) is None:
        # The admin API's sessions (open, list, revoke) go to the fleet's store.
        from speedproxy.cluster.store import FleetEdgeState
        from speedproxy.edge.host_state import host_edge_for_master

        master.edge_state = FleetEdgeState(fleet.link, host_edge_for_master(stats_path), master.config.cluster.key_prefix)
    log.info(
        "node {name} joining the fleet through {address}", name=fleet.name, address=fleet.address.describe()
    )
    return fleet
