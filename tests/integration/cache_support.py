"""Helpers of the HTTP cache's end-to-end tests (``test_e2e_cache.py``).

* :class:`Origin` scripts an :class:`~speedproxy.testing.HTTPBackend` per
  path: the n-th request for a path gets the n-th answer (the last one
  again after that), and what each path received is at hand.
* Answers: :func:`reply`, :func:`validating` (answers 304 to a matching
  conditional request), :func:`gated_stream` (a body in pieces, held at a
  gate the test opens).
* :class:`Session` sends requests on one keep-alive connection, so that they
  are served by one worker (each worker has its own memory tier).
* :func:`cache_status` parses the proxy's ``Cache-Status`` member.
"""

from __future__ import annotations

import email.utils
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from speedproxy.testing import (
    BackendExchange,
    BackendRequest,
    Behaviour,
    HTTPBackend,
    ProxyProcess,
    RawClient,
    RawResponse,
    backend_entry,
    parse_cache_status,
    path_pattern,
)

Headers = Sequence[Tuple[str, str]]

#: The route settings of the issue's example config.
API_CACHE: Dict[str, Any] = {
    "enabled": True,
    "default_ttl": "1h",
    "stale_while_revalidate": "30s",
    "stale_if_error": "1d",
    "key": {"query": "all", "ignore_query": ["sig"]},
}


def cache_config(
    *origins: HTTPBackend,
    disk_path: Optional[str] = None,
    workers: int = 2,
    max_object_size: Optional[str] = None,
    **server: Any,
) -> Dict[str, Any]:
    """A config as a user writes it: the ``api`` route caching everything under ``/``.

    Other routes try settings the ``api`` one does not have:

    - ``/strict/``: no stale-while-revalidate nor stale-if-error (every stale
      use is revalidated first);
    - ``/sie/``: stale-if-error (1d) but no stale-while-revalidate;
    - ``/nottl/``: ``default_ttl: 0`` (nothing stored on heuristics).
    """
    cache: Dict[str, Any] = {"memory_size": "64MiB"}
    if disk_path is not None:
        cache.update(disk_path=disk_path, disk_size="1GiB")
    if max_object_size is not None:
        cache["max_object_size"] = max_object_size
    return {
        "server": dict(server, workers=workers),
        "cache": cache,
        "backends": {"default": [backend_entry(origin, id=f"o{index}") for index, origin in enumerate(origins)]},
        "routing": {
            "api": {"path": "/", "upstream": "default", "cache": dict(API_CACHE)},
            "strict": {
                "path": "/strict/",
                "upstream": "default",
                "cache": dict(API_CACHE, stale_while_revalidate="0s", stale_if_error="0s"),
            },
            "sie": {
                "path": "/sie/",
                "upstream": "default",
                "cache": dict(API_CACHE, stale_while_revalidate="0s"),
            },
            "nottl": {"path": "/nottl/", "upstream": "default", "cache": dict(API_CACHE, default_ttl="0s")},
        },
    }


def http_date(offset: float = 0.0) -> str:
    """An HTTP-date ``offset`` seconds from now."""
    return email.utils.formatdate(time.time() + offset, usegmt=True)


def cc(value: str) -> Tuple[str, str]:
    return ("Cache-Control", value)


# -- the origin ------------------------------------------------------------------------


class Origin:
    """An :class:`HTTPBackend` answering each path from a script."""

    def __init__(self, backend: HTTPBackend) -> None:
        self.backend = backend
        self._scripts: Dict[str, List[Behaviour]] = {}
        self._served: Dict[str, int] = {}
        self._lock = threading.Lock()
        self._in_flight: Dict[str, int] = {}
        self._max_in_flight: Dict[str, int] = {}
        backend.behaviour = self._serve

    def script(self, path: str, *answers: Behaviour) -> str:
        """Answer ``path`` (query ignored) with ``answers`` in turn; returns ``path``."""
        with self._lock:
            self._scripts[path] = list(answers)
            self._served[path] = 0
        return path

    def requests_for(self, path: str) -> List[BackendRequest]:
        """The requests received for ``path`` (any query)."""
        with self.backend._condition:
            return [request for request in self.backend.requests if request.path.split("?", 1)[0] == path]

    def max_in_flight(self, path: str) -> int:
        """The most requests for ``path`` the origin was answering at once."""
        with self._lock:
            return self._max_in_flight.get(path, 0)

    def count(self, path: str) -> int:
        return len(self.requests_for(path))

    def wait_count(self, path: str, count: int, timeout: float = 10.0) -> List[BackendRequest]:
        self.backend.wait_for(
            lambda backend: len(self.requests_for(path)) >= count, timeout, f"{count} requests for {path}"
        )
        return self.requests_for(path)

    def _serve(self, exchange: BackendExchange) -> None:
        path = exchange.request.path.split("?", 1)[0]
        with self._lock:
            answers = self._scripts.get(path)
            index = self._served.get(path, 0)
            self._served[path] = index + 1
            self._in_flight[path] = now = self._in_flight.get(path, 0) + 1
            self._max_in_flight[path] = max(self._max_in_flight.get(path, 0), now)
        try:
            if not answers:
                exchange.send(404, b"not scripted\n", [cc("no-store")])
                return
            answers[min(index, len(answers) - 1)](exchange)
        finally:
            with self._lock:
                self._in_flight[path] -= 1


def reply(
    status: int = 200,
    body: bytes = b"",
    headers: Headers = (),
    delay: float = 0.0,
    content_type: str = "text/plain",
) -> Behaviour:
    """A whole Content-Length framed answer, after ``delay`` seconds."""

    def behaviour(exchange: BackendExchange) -> None:
        if delay:
            exchange.stopping.wait(delay)
        exchange.send(status, body, list(headers), content_type)

    return behaviour


def validating(
    body: bytes,
    headers: Headers = (),
    *,
    etag: Optional[str] = None,
    last_modified: Optional[str] = None,
    headers_304: Optional[Headers] = None,
) -> Behaviour:
    """200 with ``body``, or 304 when the request's validators match (RFC 9110 13.1)."""

    def behaviour(exchange: BackendExchange) -> None:
        request = exchange.request
        if_none_match = request.header("If-None-Match")
        if_modified_since = request.header("If-Modified-Since")
        matches = False
        if if_none_match is not None:
            tags = [tag.strip().replace("W/", "") for tag in if_none_match.split(",")]
            matches = etag is not None and etag.replace("W/", "") in tags
        elif if_modified_since is not None and last_modified is not None:
            since = email.utils.parsedate_to_datetime(if_modified_since)
            matches = since >= email.utils.parsedate_to_datetime(last_modified)
        if matches:
            exchange.send_head(304, list(headers if headers_304 is None else headers_304))
        else:
            exchange.send(200, body, list(headers))

    return behaviour


def gated_stream(
    body: bytes, pieces: int, gate: threading.Event, delay: float = 0.0, headers: Headers = ()
) -> Behaviour:
    """After ``delay``, send the head and the first of ``pieces`` pieces of ``body``
    (Content-Length framed), wait for ``gate`` (bounded), then send the rest
    piece by piece."""
    size = (len(body) + pieces - 1) // pieces

    def behaviour(exchange: BackendExchange) -> None:
        if delay:
            exchange.stopping.wait(delay)
        head = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))] + list(headers)
        exchange.send_head(200, head, body=body[:size])
        if not gate.wait(10.0):
            exchange.backend.errors.append("gated_stream: gate not opened within 10s")
        for start in range(size, len(body), size):
            exchange.write(body[start : start + size])
            time.sleep(0.01)

    return behaviour


# -- Cache-Status ------------------------------------------------------------------------


@dataclass
class CacheStatus:
    """The proxy's member of a response's Cache-Status field."""

    params: Dict[str, Any] = field(default_factory=dict)
    raw: str = ""

    @property
    def hit(self) -> bool:
        return self.params.get("hit") is True

    @property
    def fwd(self) -> Optional[str]:
        return self.params.get("fwd")

    @property
    def fwd_status(self) -> Optional[int]:
        return self.params.get("fwd-status")

    @property
    def ttl(self) -> Optional[int]:
        return self.params.get("ttl")

    @property
    def stored(self) -> bool:
        return self.params.get("stored") is True

    @property
    def collapsed(self) -> bool:
        return self.params.get("collapsed") is True

    @property
    def detail(self) -> Optional[str]:
        return self.params.get("detail")

    def __str__(self) -> str:
        return self.raw


def cache_status(response: RawResponse) -> CacheStatus:
    """The ``speedproxy`` member of ``response``'s Cache-Status (there must be exactly one)."""
    values = response.header_list("Cache-Status")
    assert values, f"no Cache-Status on {response.status} {response.headers}"
    members = parse_cache_status(", ".join(values))
    ours = [params for name, params in members if name == "speedproxy"]
    assert len(ours) == 1, f"expected one speedproxy member in {values}"
    return CacheStatus(ours[0], ", ".join(values))


def assert_hit(response: RawResponse, body: Optional[bytes] = None) -> CacheStatus:
    status = cache_status(response)
    assert status.hit and status.fwd is None, f"not a fresh hit: {status}"
    assert status.ttl is not None and status.ttl >= 0, f"a fresh hit without ttl >= 0: {status}"
    assert response.header("Age") is not None, f"a hit without Age: {response.headers}"
    if body is not None:
        assert response.body == body
    return status


def assert_stored_miss(response: RawResponse, status_code: int = 200) -> CacheStatus:
    status = cache_status(response)
    assert not status.hit and status.fwd == "miss", str(status)
    assert status.fwd_status == status_code and status.stored, str(status)
    return status


def assert_not_stored(response: RawResponse, detail: Optional[str] = None) -> CacheStatus:
    status = cache_status(response)
    assert not status.hit and not status.stored and status.fwd is not None, str(status)
    if detail is not None:
        assert status.detail == detail, str(status)
    return status


# -- clients ---------------------------------------------------------------------------------


class Session:
    """Requests on one keep-alive connection (one worker), reopened if the proxy closes it."""

    def __init__(self, proxy: ProxyProcess, timeout: float = 10.0) -> None:
        self.proxy = proxy
        self.timeout = timeout
        self.client: Optional[RawClient] = None

    def request(self, method: str, path: str, headers: Headers = (), body: bytes = b"") -> RawResponse:
        if self.client is None:
            self.client = RawClient(*self.proxy.address, timeout=self.timeout)
        self.client.request(method, path, headers=list(headers), body=body)
        response = self.client.read_response(head_only=method == "HEAD")
        if (response.header("Connection") or "").lower() == "close" or response.truncated:
            self.close()
        return response

    def get(self, path: str, *headers: Tuple[str, str]) -> RawResponse:
        return self.request("GET", path, headers)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def get_once(proxy: ProxyProcess, path: str, *headers: Tuple[str, str]) -> RawResponse:
    """One GET on a new connection (any worker)."""
    with Session(proxy) as session:
        return session.get(path, *headers)


def body_of(path: str, size: int) -> bytes:
    return path_pattern(path, size)


def run_threads(target: Callable[[int], Any], count: int, timeout: float = 20.0) -> List[Any]:
    """Run ``target(i)`` for ``i < count`` in threads; return results (exceptions re-raised)."""
    results: List[Any] = [None] * count
    errors: List[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = target(index)
        except BaseException as error:  # re-raised below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = sum(thread.is_alive() for thread in threads)
    assert not alive, f"{alive} client threads still running after {timeout}s"
    if errors:
        raise errors[0]
    return results


def worker_of(response: RawResponse) -> str:
    """Which worker answered ``response``: its request ids share a random prefix
    (``X-Request-Id: <worker prefix>-<counter>``)."""
    rid = response.header("X-Request-Id")
    assert rid and "-" in rid, f"no worker's X-Request-Id in {response.headers}"
    return rid.rsplit("-", 1)[0]


def sessions_on_workers(
    proxy: ProxyProcess, workers: int = 2, probe: str = "/_probe/unscripted", limit: int = 20
) -> Dict[str, Session]:
    """One :class:`Session` per worker, or fail.

    Each has sent one GET of ``probe`` (by default a path the :class:`Origin`
    answers with an uncacheable 404), to learn which worker it is on.
    """
    found: Dict[str, Session] = {}
    spare: List[Session] = []
    for _ in range(limit):
        session = Session(proxy)
        worker = worker_of(session.get(probe))
        if worker in found:
            spare.append(session)
        else:
            found[worker] = session
        if len(found) == workers:
            break
    for session in spare:
        session.close()
    assert len(found) == workers, f"connections reached workers {sorted(found)} only"
    return found
