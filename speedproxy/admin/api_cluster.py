"""``GET /api/v1/cluster/nodes``: the nodes of the fleet (behind the API key).

With ``cluster.redis`` set, the live nodes as Redis knows them (each one's
name, admin and proxy addresses, pid, version, workers and the age of its
last heartbeat; ``self`` marks this node) and the state of this node's
link to Redis.  503 ``redis_unavailable`` while Redis cannot be reached;
without ``cluster.redis``, ``enabled: false`` and this node alone.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.web.server import Request

from speedproxy import __version__
from speedproxy.admin.context import APIResource
from speedproxy.admin.json_resource import APIError


class ClusterNodesResource(APIResource):
    """``GET /api/v1/cluster/nodes``."""

    def json_GET(self, request: Request) -> Any:
        control = self.api.control
        fleet = getattr(control, "fleet", None)
        if fleet is None:
            from speedproxy.cluster.node import node_name

            config = control.config
            return {
                "enabled": False,
                "detail": "cluster.redis is not set: this node is alone",
                "node": node_name(config),
                "nodes": [{"name": node_name(config), "self": True, "pid": os.getpid(), "version": __version__,
                           "admin": config.admin.listen, "listen": f"{config.server.host}:{config.server.port}"}],
                "count": 1,
            }

        def answer(body: Any) -> Any:
            body["enabled"] = True
            return body

        def unavailable(failure: Any) -> Any:
            from speedproxy.cluster.link import RedisDown

            failure.trap(RedisDown)
            raise APIError(
                503, "redis_unavailable", f"the fleet's Redis cannot be reached: {failure.getErrorMessage()}",
                extra={"node": fleet.name, "redis": fleet.summary()},
            )

        return fleet.nodes().addCallbacks(answer, unavailable)
