"""Helpers of the fleet end-to-end tests: a Redis fixture and two speedproxy nodes."""

from __future__ import annotations

import http.client
import re
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import pytest

from speedproxy.testing.redis import RedisServer, RedisUnavailable, ensure_redis_server
from speedproxy.testing import ProxyProcess, deep_merge, proxy_config

KEY = "fleet-Key-7"
#: Every node serves the site under this name (as behind DNS), so cache keys agree.
SITE = "media.fleet.test"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A real ``redis-server`` on a free port (Debian's package, installed if missing)."""
    try:
        ensure_redis_server()
    except RedisUnavailable as error:
        pytest.fail(str(error), pytrace=False)
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


def node_config(backend: Any, redis_url: str, name: str, extra: Optional[Mapping[str, Any]] = None, **server: Any) -> Dict[str, Any]:
    config = deep_merge(
        proxy_config(backend, **dict({"workers": 2}, **server)),
        {
            "admin": {"api_key": KEY},
            "cluster": {"redis": redis_url, "node_name": name, "heartbeat": "500ms", "timeout": "300ms"},
        },
    )
    return deep_merge(config, extra or {})


def get(proxy: ProxyProcess, path: str, headers: Optional[Mapping[str, str]] = None,
        timeout: float = 10.0) -> Tuple[int, Dict[str, str], bytes]:
    """One GET through ``proxy`` for the fleet's site, on a fresh connection."""
    connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
    try:
        connection.request("GET", path, headers=dict({"Host": SITE, "Connection": "close"}, **(headers or {})))
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def metric(text: str, name: str) -> Optional[float]:
    match = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def node_names(body: Mapping[str, Any]) -> List[str]:
    return [node["name"] for node in body.get("nodes", [])]


class Collector:
    """An HTTP traffic collector on a free port: keeps every JSON batch POSTed to it.

    ``refusing``: answer 503 instead (a collector that is down for a while).
    """

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        self.batches: List[Dict[str, Any]] = []
        self.refused = 0
        self.refusing = False
        self.lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with collector.lock:
                    refusing = collector.refusing
                    if refusing:
                        collector.refused += 1
                    else:
                        collector.batches.append(json.loads(data))
                self.send_response(503 if refusing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/batches"

    def records(self) -> List[Dict[str, Any]]:
        with self.lock:
            return [record for batch in self.batches for record in batch["records"]]

    def total(self, field: str, **match: str) -> int:
        return sum(r[field] for r in self.records() if all(r.get(k) == v for k, v in match.items()))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
