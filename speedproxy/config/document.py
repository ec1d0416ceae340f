"""The whole config file: its top-level sections, the checks between them and its relative paths.

:data:`CONFIG` is the top of the schema (:mod:`speedproxy.config.schema`):
every section the file may have, in the order they are written back.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

from speedproxy.config.backends import BACKEND, read_backends, write_backends
from speedproxy.config.caching import CACHE
from speedproxy.config.cluster import ACCOUNTING, CLUSTER, check_accounting
from speedproxy.config.grpc_service import GRPC
from speedproxy.config.located import Val
from speedproxy.config.model import (
    AccountingConfig,
    BackendConfig,
    CacheConfig,
    ClusterConfig,
    Config,
    GrpcConfig,
    TracingConfig,
)
from speedproxy.config.problems import Problems, Reported, join, unknown_key
from speedproxy.config.routes import ROUTE, read_routing, write_routing
from speedproxy.config.schema import Kind, Section, equals, is_empty, omit_if, read_section, section, write_section
from speedproxy.config.server import ADMIN, SERVER, SSL
from speedproxy.config.tracing import TRACING
from speedproxy.config.units import describe_value
from speedproxy.config import upstream_rules

__all__ = ["CONFIG", "TOP_LEVEL", "build", "write_config"]

CONFIG = Section(
    Config,
    {
        "server": section(SERVER),
        "ssl": section(SSL),
        "admin": section(ADMIN),
        # Read by build(), which checks them against each other.
        "backends": Kind(lambda problems, val, path: read_backends(problems, val), write=write_backends, holds=BACKEND),
        "routing": Kind(lambda problems, val, path: read_routing(problems, val, None), write=write_routing, holds=ROUTE),
        "cache": omit_if(equals(CacheConfig()), section(CACHE)),
        "tracing": omit_if(equals(TracingConfig()), section(TRACING)),
        "grpc": omit_if(equals(GrpcConfig()), section(GRPC)),
        "cluster": omit_if(equals(ClusterConfig()), section(CLUSTER)),
        "accounting": omit_if(equals(AccountingConfig()), section(ACCOUNTING)),
        "upstreams": Kind(
            lambda problems, val, path: upstream_rules.upstreams(problems, val, None),
            write=upstream_rules.dump,
            omit=is_empty,
            holds=upstream_rules.UPSTREAM_RULES,
        ),
    },
    derived={"source": "the file the config was read from, not a key of it"},
)

#: The top-level keys, in the order they are written.
TOP_LEVEL: Tuple[str, ...] = tuple(CONFIG.fields)

#: Sections read on their own (their defaults where missing or bad), in the order checked.
_PLAIN_SECTIONS = ("server", "ssl", "admin", "cache", "tracing", "grpc", "cluster", "accounting")


def _resolve(base_dir: str, path: str) -> str:
    if not path:
        return path
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))


def build(problems: Problems, root: Val, base_dir: Optional[str]) -> Config:
    """Validate the whole tree and return the :class:`Config`, or raise :class:`ConfigError`.

    Relative paths (``ssl.cert_file``, ``ssl.key_file``, ``admin.api_key_file``,
    ``server.access_log``, ``cache.disk_path``) are made absolute against
    *base_dir* when it is given.
    """
    top = {} if root.value is None else root.value
    if not isinstance(top, dict):
        keys = ", ".join(TOP_LEVEL)
        problems.add(root.line, "", f"expected a mapping with keys {keys}, got {describe_value(top)}")
        problems.raise_if_any()
    for key, item in top.items():
        if key not in TOP_LEVEL:
            problems.add(item.line, join("", key), unknown_key(key, TOP_LEVEL))
    given = {key: top[key] for key in TOP_LEVEL if key in top and top[key].value is not None}

    plain: Dict[str, Any] = {}
    for key in _PLAIN_SECTIONS:
        spec = CONFIG.fields[key].holds
        assert spec is not None
        plain[key] = read_section(problems, given.get(key), key, spec)
    ssl = plain["ssl"]
    if ssl.enabled:
        for key in ("cert_file", "key_file"):
            if not getattr(ssl, key):
                val = given["ssl"].value.get(key, given["ssl"])
                problems.add(val.line, f"ssl.{key}", "must be set when ssl.enabled is true")

    defaults = Config()
    known: Optional[Dict[str, Tuple[BackendConfig, ...]]]
    if "backends" in given:
        try:
            backends = known = read_backends(problems, given["backends"])
        except Reported:
            backends, known = {}, None
    else:
        backends = known = dict(defaults.backends)
    if "routing" in given:
        routing = read_routing(problems, given["routing"], known)
    else:
        routing = dict(defaults.routing)
        if known is not None and "default" not in known:
            problems.add(
                None if root.line is None else 1,
                "routing",
                "no routing section, so the default route needs upstream 'default', which is not "
                f"in backends (known: {', '.join(known) or 'none'})",
            )
    from speedproxy.config.grpc_routes import check_grpc

    check_grpc(
        problems, routing, given.get("routing"), known, given.get("backends"), plain["server"], given.get("upstreams")
    )
    upstreams = upstream_rules.upstreams(problems, given.get("upstreams"), known)
    check_accounting(problems, given, plain["cluster"], plain["accounting"], routing)
    problems.raise_if_any()

    if base_dir is not None:
        plain["ssl"] = dataclasses.replace(
            ssl, cert_file=_resolve(base_dir, ssl.cert_file), key_file=_resolve(base_dir, ssl.key_file)
        )
        admin = plain["admin"]
        plain["admin"] = dataclasses.replace(admin, api_key_file=_resolve(base_dir, admin.api_key_file))
        server = plain["server"]
        if server.access_log not in ("-", "off"):
            plain["server"] = dataclasses.replace(server, access_log=_resolve(base_dir, server.access_log))
        cache = plain["cache"]
        if cache.disk_path:
            plain["cache"] = dataclasses.replace(cache, disk_path=_resolve(base_dir, cache.disk_path))
    return Config(backends=backends, routing=routing, upstreams=upstreams, **plain)


def write_config(config: Config) -> Dict[str, Any]:
    """*config* as plain JSON/YAML-friendly data laid out like the file (secrets not masked)."""
    return write_section(CONFIG, config)
