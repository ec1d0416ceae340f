"""The ``server``, ``ssl`` and ``admin`` sections: the listeners and the data-path limits."""

from __future__ import annotations

from typing import Any, Optional

from speedproxy.config.kinds import (
    as_list,
    boolean,
    choice,
    duration,
    fraction,
    header_name,
    integer,
    networks,
    percent,
    size,
    string,
    text,
)
from speedproxy.config.located import Val
from speedproxy.config.model import AdminConfig, ServerConfig, SSLConfig
from speedproxy.config.problems import Problems, Reported
from speedproxy.config.schema import Kind, Section
from speedproxy.config.units import describe_value, parse_listen

__all__ = ["ADMIN", "SERVER", "SSL"]


def _workers(problems: Problems, val: Val, path: str) -> Optional[int]:
    value = val.value
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'expected "auto" or an integer >= 0, got {describe_value(value)}')
    return value


#: ``auto`` (``None``: one per CPU) or a number.
workers = Kind(_workers, write=lambda value: "auto" if value is None else value)


def _cpu_affinity(problems: Problems, val: Val, path: str) -> Any:
    """``off`` (also YAML's unquoted ``off``, a boolean), ``auto`` or a list of CPU numbers."""
    value = val.value
    if value is False or value in ("off", "auto"):
        return "off" if value is False else value
    if value == []:
        raise ValueError('an empty list pins nothing: write "off"')
    if not isinstance(value, list):
        raise ValueError(f'expected "off", "auto" or a list of CPU numbers like [0, 1], got {describe_value(value)}')
    cpus = []
    for index, item in enumerate(value):
        if isinstance(item.value, bool) or not isinstance(item.value, int) or item.value < 0:
            problems.add(item.line, f"{path}[{index}]", f"expected a CPU number >= 0, got {describe_value(item.value)}")
        else:
            cpus.append(item.value)
    if len(cpus) != len(value):
        raise Reported
    return tuple(cpus)


cpu_affinity = Kind(_cpu_affinity, write=lambda value: as_list(value) if isinstance(value, tuple) else value)


def _listen(problems: Problems, val: Val, path: str) -> str:
    """``host:port`` checked by :func:`~speedproxy.config.units.parse_listen`, the one parser of it."""
    value = text(val)
    parse_listen(value)  # ValueError names what is wrong
    return value


#: ``admin.listen``: kept as written, parsed by whoever binds it with the same parser.
listen = Kind(_listen)

_POSITIVE_DURATION = duration(positive=True)

SERVER = Section(
    ServerConfig,
    {
        "host": string(non_empty=True),
        "port": integer(1, 65535),
        "workers": workers,
        "read_timeout": _POSITIVE_DURATION,
        "write_timeout": _POSITIVE_DURATION,
        "idle_timeout": _POSITIVE_DURATION,
        "upstream_connect_timeout": _POSITIVE_DURATION,
        "upstream_read_timeout": _POSITIVE_DURATION,
        "upstream_keepalive_timeout": _POSITIVE_DURATION,
        "upstream_keepalive": integer(0),
        "max_conn": integer(1),
        "max_header_size": size(1024),
        "max_body_size": size(0),
        "real_ip_header": header_name,
        "trusted_proxies": networks,
        "access_log": string(non_empty=True),
        "access_log_format": choice(("combined", "json"), "access log format"),
        "shutdown_grace": duration(positive=False),
        "slow_request_threshold": _POSITIVE_DURATION,
        "retries": integer(0, 10),
        "retry_budget": fraction,
        "websocket_idle_timeout": _POSITIVE_DURATION,
        "sse_idle_timeout": _POSITIVE_DURATION,
        "zero_copy": boolean,
        "merge_slashes": boolean,
        "forward_original_path": boolean,
        "escaped_slashes": choice(("refuse", "keep"), "escaped_slashes action"),
        "max_request_line": size(256),
        "panic_threshold": percent(optional=False),
        "queue_timeout": duration(positive=False),
        "queue_size": integer(0),
        "cpu_affinity": cpu_affinity,
        "allow": networks,
        "deny": networks,
        "h2_max_concurrent_streams": integer(1, 65536),
    },
)

SSL = Section(SSLConfig, {"enabled": boolean, "cert_file": string(), "key_file": string()})

ADMIN = Section(
    AdminConfig,
    {
        "listen": listen,
        "api_key": string(),
        "api_key_file": string(),
        # Shown in bytes by GET /api/v1/config since it was added (clients read it as a number).
        "max_body_size": size(1024, written_in_bytes=True),
    },
)
