"""Cascading purges and clears to upstream speedproxies (``cache.cascade_purge``).

When a backend is a speedproxy too (a cache nearer the origin), purging
here alone is not enough: the next miss would fetch the stale copy from it
again.  With ``cache.cascade_purge: true``, a purge or clear is first sent
to the admin API of every backend with an ``admin_url`` (``POST
/api/v1/cache/purge`` or ``POST /cache/clear``, with the backend's
``admin_api_key`` as ``X-API-Key``), then carried out here, so the nearer
caches are clean before ours can refetch.

Loop safety: every forwarded call carries ``X-Speedproxy-Purge-Path``, the
node ids it has passed, this one last.  A node that finds its own id in the
header answers at once without acting or forwarding (the purge already
passed there); a node never forwards to an admin API whose node id (learned
from its earlier answers) is already on the path; and a path of
:data:`MAX_HOPS` nodes goes no further.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Callable, Dict, List, Mapping, Optional
from urllib.parse import urlencode

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, gatherResults, maybeDeferred, succeed

from speedproxy.admin.json_resource import APIError
from speedproxy.config import Config

PATH_HEADER = b"X-Speedproxy-Purge-Path"
#: Nodes a purge may pass before it is forwarded no further.
MAX_HOPS = 16
#: Seconds an upstream's admin API has to answer.
TIMEOUT = 10.0


def incoming_path(request: Any) -> List[str]:
    """The node ids an incoming purge has passed (empty: it starts here)."""
    path: List[str] = []
    for value in request.requestHeaders.getRawHeaders(PATH_HEADER, []):
        for item in value.decode("latin-1").split(","):
            item = item.strip()
            if item and len(path) < 4 * MAX_HOPS:
                path.append(item[:200])
    return path


def targets(config: Config) -> List[Dict[str, str]]:
    """The admin APIs to forward to: one per distinct ``admin_url``."""
    seen = set()
    found = []
    for upstream, members in config.backends.items():
        for backend in members:
            url = getattr(backend, "admin_url", "").rstrip("/")
            if url and url not in seen:
                seen.add(url)
                found.append(
                    {"upstream": upstream, "backend": backend.id, "url": url,
                     "key": getattr(backend, "admin_api_key", "")}
                )
    return found


class Cascade:
    """Forwards purges and clears; one per admin site.

    ``client``: a treq ``HTTPClient`` (or anything with its ``post``); by
    default one over an ``Agent`` on ``reactor``.  ``node_id``: this node's
    id on purge paths; by default ``<hostname>:<admin port>-<random>``
    (``admin_port``, called when first needed, gives the port).
    """

    def __init__(
        self,
        reactor: Any,
        client: Any = None,
        node_id: Optional[str] = None,
        admin_port: Optional[Callable[[], Any]] = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.reactor = reactor
        self._client = client
        self._node_id = node_id
        self._admin_port = admin_port
        self.timeout = timeout
        #: ``admin_url`` → the node id its answers gave.
        self.learned: Dict[str, str] = {}

    @property
    def node_id(self) -> str:
        if self._node_id is None:
            port: Any = ""
            try:
                port = self._admin_port() if self._admin_port is not None else ""
            except Exception:
                port = ""
            self._node_id = f"{socket.gethostname()}:{port}-{os.urandom(3).hex()}"
        return self._node_id

    @property
    def client(self) -> Any:
        if self._client is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

            class QuietFactory(_HTTP11ClientFactory):
                noisy = False  # no "Starting factory" log lines per call

            pool = HTTPConnectionPool(self.reactor, persistent=False)
            pool._factory = QuietFactory
            self._client = HTTPClient(Agent(self.reactor, connectTimeout=self.timeout, pool=pool))
        return self._client

    def passed_here(self, path: List[str]) -> bool:
        """Has this purge already passed this node?"""
        return self.node_id in path

    def skipped(self, path: List[str]) -> Dict[str, Any]:
        """The answer to a purge that already passed here (nothing is done again)."""
        return {
            "node": self.node_id,
            "skipped": True,
            "detail": "this purge already passed this node; nothing done, nothing forwarded",
            "purge_path": path,
        }

    def around(
        self,
        config: Config,
        path: List[str],
        kind: str,
        payload: Mapping[str, Any],
        local: Callable[[], Deferred],
    ) -> Deferred:
        """Forward (when ``cache.cascade_purge``), then run ``local``; fires with its answer.

        The answer (or the ``APIError`` it fails with) gets ``node`` and,
        when cascading, ``upstreams``: one row per upstream admin API.
        """
        cascading = bool(getattr(config.cache, "cascade_purge", False))
        forwarded = self.forward(config, path, kind, payload) if cascading else succeed(None)

        def then(upstreams: Optional[List[Dict[str, Any]]]) -> Deferred:
            def add(body: Dict[str, Any]) -> Dict[str, Any]:
                body["node"] = self.node_id
                if upstreams is not None:
                    body["upstreams"] = upstreams
                return body

            def add_to_error(failure: Any) -> Any:
                if failure.check(APIError) and upstreams is not None:
                    failure.value.extra["upstreams"] = upstreams
                return failure

            return maybeDeferred(local).addCallbacks(add, add_to_error)

        return forwarded.addCallback(then)

    def forward(self, config: Config, path: List[str], kind: str, payload: Mapping[str, Any]) -> Deferred:
        """Send the purge (``kind`` ``purge``) or clear (``clear``) to every upstream admin API.

        Fires with one row per target: ``backend``, ``upstream``, ``url``
        and ``status`` with ``result`` (the answer body), or ``error``, or
        ``skipped``.
        """
        onward = path + [self.node_id]
        calls = []
        for target in targets(config):
            row: Dict[str, Any] = {"upstream": target["upstream"], "backend": target["backend"], "url": target["url"]}
            if len(onward) >= MAX_HOPS:
                calls.append(succeed(dict(row, status=None, skipped=f"the purge passed {MAX_HOPS} nodes")))
            elif self.learned.get(target["url"]) in onward:
                calls.append(succeed(dict(row, status=None, skipped="that node is already on the purge path")))
            else:
                calls.append(self._send(target, row, onward, kind, payload))
        return gatherResults(calls)

    def _send(
        self, target: Mapping[str, str], row: Dict[str, Any], onward: List[str], kind: str, payload: Mapping[str, Any]
    ) -> Deferred:
        headers = {PATH_HEADER: [", ".join(onward).encode("latin-1")]}
        if target["key"]:
            headers[b"X-API-Key"] = [target["key"].encode("latin-1")]
        if kind == "purge":
            url = target["url"] + "/api/v1/cache/purge"
            call = maybeDeferred(self.client.post, url, json=dict(payload), headers=headers)
        else:
            query = urlencode({"type": payload.get("type", "all"), "confirm": "yes"})
            url = target["url"] + "/cache/clear?" + query
            call = maybeDeferred(self.client.post, url, headers=headers)

        def answered(response: Any) -> Deferred:
            def body(data: bytes) -> Dict[str, Any]:
                try:
                    result: Any = json.loads(data.decode("utf-8"))
                except ValueError:
                    result = data[:500].decode("utf-8", "replace")
                if isinstance(result, dict) and isinstance(result.get("node"), str):
                    self.learned[target["url"]] = result["node"]
                return dict(row, status=response.code, result=result)

            return response.content().addCallback(body)

        def failed(failure: Any) -> Dict[str, Any]:
            message = failure.getErrorMessage() or type(failure.value).__name__
            if failure.check(CancelledError, TimeoutError):
                message = f"no answer within {self.timeout:g}s"
            return dict(row, status=None, error=message)

        call.addCallback(answered)
        call.addTimeout(self.timeout, self.reactor)
        return call.addErrback(failed)
