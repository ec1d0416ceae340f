"""Small helpers of the test harnesses: free ports, bounded waits, configs, body patterns."""

from __future__ import annotations

import hashlib
import re
import socket
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Mapping, Tuple, Union

if TYPE_CHECKING:  # pragma: no cover
    from speedproxy.testing.http_backend import HTTPBackend
    from speedproxy.testing.raw import RawBackend


#: The line ``ProxyProcess`` waits for, as logged by the worker service.
READY_PATTERN = re.compile(r"speedproxy \S+ serving on (\S+):(\d+)")

#: Default bound of every wait in this module, in seconds.
DEFAULT_TIMEOUT = 10.0

_POLL = 0.02


# -- small helpers ---------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value.

    :raises TimeoutError: when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(_POLL)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> Dict[str, Any]:
    """Return ``base`` updated with ``override``, merging nested mappings."""
    result: Dict[str, Any] = dict(base)
    for key, value in override.items():
        current = result.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            result[key] = deep_merge(current, value)
        else:
            result[key] = value
    return result


_PATTERN_BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern_chunks(size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """Yield ``size`` bytes of a deterministic pattern, ``chunk`` bytes at a time.

    Large bodies are generated on the fly and never held whole in memory.
    """
    block = _PATTERN_BLOCK
    if chunk != len(block):
        block = (block * (chunk // len(block) + 1))[:chunk]
    remaining = size
    while remaining > 0:
        piece = block if remaining >= len(block) else block[:remaining]
        remaining -= len(piece)
        yield piece


def pattern_sha256(size: int) -> str:
    """The hex sha256 of ``size`` bytes of :func:`pattern_chunks`."""
    digest = hashlib.sha256()
    for piece in pattern_chunks(size):
        digest.update(piece)
    return digest.hexdigest()


def backend_entry(server: Union["HTTPBackend", "RawBackend", Tuple[str, int]], id: str = "", **extra: Any) -> Dict[str, Any]:
    """A ``backends.<group>[]`` config entry for a test backend or ``(host, port)``."""
    if isinstance(server, tuple):
        host, port = server
        name = id or f"b{port}"
    else:
        host, port = server.host, server.port
        name = id or server.name
    entry: Dict[str, Any] = {"id": name, "host": host, "port": port}
    entry.update(extra)
    return entry


def proxy_config(
    *servers: Union["HTTPBackend", "RawBackend", Tuple[str, int]],
    load_balancer: str = "round_robin",
    **server_settings: Any,
) -> Dict[str, Any]:
    """A config mapping with one ``default`` upstream and route for ``servers``.

    Keyword arguments become ``server.*`` settings.
    """
    config: Dict[str, Any] = {
        "backends": {"default": [backend_entry(server, id=f"b{index}") for index, server in enumerate(servers)]},
        "routing": {"default": {"path": "/", "upstream": "default", "load_balancer": load_balancer}},
    }
    if server_settings:
        config["server"] = dict(server_settings)
    return config
