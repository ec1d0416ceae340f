"""Test doubles for speedproxy, one harness per module (everything is importable from here).

* :mod:`~speedproxy.testing.support`: :func:`free_port`, bounded
  :func:`wait_until`, configs (:func:`proxy_config`, :func:`backend_entry`)
  and deterministic body patterns.
* :mod:`~speedproxy.testing.process`: :class:`ProxyProcess` writes a YAML
  config, runs ``twistd -n speedproxy`` as a subprocess, waits for its
  readiness line, reloads and stops it.
* :mod:`~speedproxy.testing.http_backend`: :class:`HTTPBackend`, a threaded
  HTTP/1.1 origin that records every request and counts TCP connections;
  its answers are pluggable behaviours (:func:`echo`, :func:`fixed_body`,
  :func:`streaming`, :func:`stall`, :func:`close_mid_response`,
  :func:`delayed`, ...).
* :mod:`~speedproxy.testing.raw`: :class:`RawBackend` hands each accepted
  socket to a test-supplied function (malformed answers); :class:`RawClient`
  speaks HTTP/1.1 over one socket, byte by byte under the test's control
  (pipelining, smuggling attempts, partial heads).
* :mod:`~speedproxy.testing.in_memory`: :class:`InMemoryProxy` runs the data
  path on Twisted's ``MemoryReactorClock`` with in-memory clients and
  backends: no sockets, no threads, for fast unit tests of protocol logic.
* :mod:`~speedproxy.testing.cache_status`: bodies derived from their path and
  ``Cache-Status`` (RFC 9211) parsing, for cache tests.

The process, HTTP and raw harnesses are blocking and thread based, so that
integration tests drive a real ``twistd speedproxy`` from plain pytest tests
without a reactor in the test process; none of them imports a reactor.
Every wait is bounded.
"""

from __future__ import annotations

from speedproxy.testing.support import (
    backend_entry,
    deep_merge,
    free_port,
    pattern_chunks,
    pattern_sha256,
    proxy_config,
    wait_until,
)
from speedproxy.testing.http_backend import (
    BackendExchange,
    BackendRequest,
    Behaviour,
    HTTPBackend,
    close_mid_response,
    delayed,
    echo,
    fixed_body,
    paced,
    raw_response,
    stall,
    streaming,
    upload_digest,
)
from speedproxy.testing.raw import (
    RawBackend,
    RawClient,
    RawHandler,
    RawResponse,
    read_request_head,
)
from speedproxy.testing.process import (
    ProxyProcess,
    ProxyReloadError,
    ProxyStartError,
    check_config,
    repo_root,
    subprocess_env,
    twistd_command,
)
from speedproxy.testing.in_memory import (
    IN_MEMORY_CACHED_CONFIG,
    IN_MEMORY_CONFIG,
    InMemoryBackend,
    InMemoryClient,
    InMemoryProxy,
    ParsedResponse,
    parse_responses,
)
from speedproxy.testing.cache_status import (
    parse_cache_status,
    path_body,
    path_pattern,
)

__all__ = [
    "IN_MEMORY_CACHED_CONFIG",
    "IN_MEMORY_CONFIG",
    "InMemoryBackend",
    "InMemoryClient",
    "InMemoryProxy",
    "ParsedResponse",
    "parse_responses",
    "BackendRequest",
    "BackendExchange",
    "HTTPBackend",
    "ProxyProcess",
    "ProxyReloadError",
    "ProxyStartError",
    "RawHandler",
    "RawBackend",
    "RawClient",
    "RawResponse",
    "Behaviour",
    "backend_entry",
    "check_config",
    "repo_root",
    "subprocess_env",
    "close_mid_response",
    "delayed",
    "deep_merge",
    "echo",
    "fixed_body",
    "free_port",
    "parse_cache_status",
    "path_body",
    "path_pattern",
    "pattern_chunks",
    "paced",
    "pattern_sha256",
    "proxy_config",
    "read_request_head",
    "raw_response",
    "stall",
    "streaming",
    "twistd_command",
    "upload_digest",
    "wait_until",
]
