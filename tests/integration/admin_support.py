"""Helpers for the admin API end-to-end tests: an HTTP client and a load generator.

Blocking and thread based like :mod:`speedproxy.testing`; every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from speedproxy.testing import ProxyProcess, wait_until

TIMEOUT = 10.0


@dataclass
class Answer:
    status: int
    headers: Dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw.decode("utf-8"))

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.raw[:400]!r})"


class AdminClient:
    """Plain ``http.client`` calls against a proxy's admin listener."""

    def __init__(self, host: str, port: int, key: Optional[str] = None) -> None:
        self.host = host
        self.port = port
        self.key = key

    @classmethod
    def of(cls, proxy: ProxyProcess, key: Optional[str] = None) -> "AdminClient":
        return cls(proxy.host, proxy.admin_port, key)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: Optional[bytes] = None,
        key: Any = "default",
        headers: Optional[Mapping[str, str]] = None,
        timeout: float = TIMEOUT,
    ) -> Answer:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            send = dict(headers or {})
            use_key = self.key if key == "default" else key
            if use_key is not None:
                send["X-API-Key"] = use_key
            data = raw
            if data is None and body is not None:
                data = json.dumps(body).encode("utf-8")
                send.setdefault("Content-Type", "application/json")
            connection.request(method, path, body=data, headers=send)
            response = connection.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    def get(self, path: str, **kw: Any) -> Answer:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return self.call("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return self.call("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Answer:
        return self.call("DELETE", path, **kw)


def proxy_get(proxy: ProxyProcess, path: str = "/", timeout: float = TIMEOUT) -> Tuple[int, Dict[str, str], bytes]:
    """One GET through the proxy on a fresh connection."""
    connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@dataclass
class Hit:
    time: float
    status: int
    backend: str
    worker: str


class Load:
    """``threads`` clients sending GETs through the proxy, each on a new connection.

    New connections are spread by the kernel over the workers; each hit
    records which backend answered (the echo body) and which worker proxied
    it (the per-worker prefix of ``X-Request-Id``).
    """

    def __init__(self, proxy: ProxyProcess, threads: int = 6, path: str = "/load") -> None:
        self.proxy = proxy
        self.path = path
        self.hits: List[Hit] = []
        self.errors: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, headers, body = proxy_get(self.proxy, self.path, timeout=5.0)
                backend = ""
                if status == 200:
                    backend = json.loads(body.decode("utf-8")).get("backend", "")
                worker = headers.get("x-request-id", "").split("-", 1)[0]
                hit = Hit(time.monotonic(), status, backend, worker)
                with self._lock:
                    self.hits.append(hit)
            except Exception as error:  # connection trouble is recorded, not raised
                with self._lock:
                    self.errors.append(repr(error))
                time.sleep(0.01)

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10.0)

    def since(self, moment: float) -> List[Hit]:
        with self._lock:
            return [hit for hit in self.hits if hit.time >= moment]

    def wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        try:
            return wait_until(predicate, timeout, what)
        except TimeoutError as error:
            with self._lock:
                tail = self.hits[-10:]
            raise TimeoutError(f"{error}; last hits {tail}") from None
