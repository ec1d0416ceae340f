"""The control channel between the master and each worker (AMP).

AMP runs over an AF_UNIX socketpair created by the master; the worker gets
its end as an inherited file descriptor.  AMP gives request/response with
errors out of the box and keeps both sides honest about types.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List

from twisted.protocols import amp

_CHUNK = 60000


class JSONValue(amp.Argument):
    """Any JSON value, split across as many AMP keys as it needs.

    A single AMP value is limited to 64 KiB; a config with many backends is
    larger, so the text is cut into numbered keys ``name.0``, ``name.1`` ...
    """

    def toBox(self, name: bytes, strings: Dict[bytes, bytes], objects: Dict[str, Any], proto: amp.AMP) -> None:
        text = json.dumps(objects[name.decode("ascii")], separators=(",", ":")).encode("utf-8")
        pieces = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or [b""]
        strings[name] = str(len(pieces)).encode("ascii")
        for index, piece in enumerate(pieces):
            strings[name + b"." + str(index).encode("ascii")] = piece

    def fromBox(self, name: bytes, strings: Dict[bytes, bytes], objects: Dict[str, Any], proto: amp.AMP) -> None:
        count = int(strings[name])
        parts: List[bytes] = []
        for index in range(count):
            parts.append(strings.pop(name + b"." + str(index).encode("ascii")))
        objects[name.decode("ascii")] = json.loads(b"".join(parts).decode("utf-8"))


class ConfigRefused(Exception):
    """A worker could not apply a config; nothing of it was applied."""


class ApplyConfig(amp.Command):
    """Master → worker: make this config (and stats index) the live one."""

    arguments = [
        (b"config", JSONValue()),
        (b"version", amp.Integer()),
        (b"stats_index", JSONValue()),
    ]
    response = [(b"version", amp.Integer())]
    errors = {ConfigRefused: b"CONFIG_REFUSED"}


class Ready(amp.Command):
    """Worker → master: the worker serves traffic now."""

    arguments = [(b"pid", amp.Integer()), (b"slot", amp.Integer()), (b"version", amp.Integer())]
    response: List[Any] = []


class Invalidated(amp.Command):
    """Worker → master: these cache keys were invalidated (an unsafe method
    succeeded); the master tells every worker to drop them from memory."""

    arguments = [(b"keys", amp.ListOf(amp.String()))]
    response: List[Any] = []
    requiresAnswer = False


class DropKeys(amp.Command):
    """Master → worker: drop these keys (all variants) from the memory tier."""

    arguments = [(b"keys", amp.ListOf(amp.String()))]
    response: List[Any] = []
    requiresAnswer = False


class Shutdown(amp.Command):
    """Master → worker: stop accepting, drain for ``grace`` seconds, exit 0."""

    arguments = [(b"grace", amp.Float())]
    response: List[Any] = []
    requiresAnswer = False


class SetBackendState(amp.Command):
    """Master → worker: a backend's health as seen by the master's checks."""

    arguments = [
        (b"upstream", amp.Unicode()),
        (b"backend_id", amp.Unicode()),
        (b"healthy", amp.Boolean()),
    ]
    response: List[Any] = []


class DisconnectBackend(amp.Command):
    """Master → worker: close every connection (pooled and in flight) to a backend."""

    arguments = [(b"upstream", amp.Unicode()), (b"backend_id", amp.Unicode())]
    response = [(b"closed", amp.Integer())]


class SetReportedLoad(amp.Command):
    """Master → worker: the load a backend reported about itself (``/api/v1/report``).

    ``load`` is a fraction of capacity, 0.0 (idle) .. 1.0 (saturated); it
    becomes :attr:`speedproxy.upstreams.Backend.reported_load`.
    """

    arguments = [
        (b"upstream", amp.Unicode()),
        (b"backend_id", amp.Unicode()),
        (b"load", amp.Float()),
    ]
    response = [(b"found", amp.Boolean())]


class Inspect(amp.Command):
    """Master → worker: what the worker is doing right now.

    The answer is a JSON report (see :func:`speedproxy.admin.tracking.inspect_core`):
    the worker's pid, slot and config version, up to ``active_limit``
    in-flight requests, up to ``slow_limit`` recent slow requests and the
    run-time state of every backend (health, EWMA, reported load, in flight).
    """

    arguments = [(b"active_limit", amp.Integer()), (b"slow_limit", amp.Integer())]
    response = [(b"report", JSONValue())]


class TLSRefused(Exception):
    """A worker could not use the certificate files; it kept the one it had."""


class ReloadTLS(amp.Command):
    """Master → worker: read the certificate and key files again.

    New handshakes use what the files hold now; open connections keep
    theirs.  The answer describes the certificate now served (see
    :meth:`speedproxy.tls.LoadedCertificate.summary`).
    """

    arguments: List[Any] = []
    response = [(b"certificate", JSONValue())]
    errors = {TLSRefused: b"TLS_REFUSED"}


# -- the cache (see speedproxy.admin.cache_worker for what a worker does) -----------


class CacheRefused(Exception):
    """A worker cannot carry out a cache action with these arguments (a bad URL...)."""


class PurgeCache(amp.Command):
    """Master → worker: drop cached objects from the worker's memory tier and the disk tier.

    Exactly one of ``url`` (every variant stored for it, by every cached
    route) and ``prefix`` (every key, ``scheme://host/path?query``, starting
    with it).  The answer is how many objects this worker dropped.
    """

    arguments = [(b"url", amp.Unicode(optional=True)), (b"prefix", amp.Unicode(optional=True))]
    response = [(b"purged", amp.Integer())]
    errors = {CacheRefused: b"CACHE_REFUSED"}


class ClearCache(amp.Command):
    """Master → worker: drop everything from tier ``memory``, ``disk`` or ``all``."""

    arguments = [(b"tier", amp.Unicode())]
    response = [(b"cleared", amp.Integer())]
    errors = {CacheRefused: b"CACHE_REFUSED"}


class CacheInfo(amp.Command):
    """Master → worker: entries, bytes and counters of its tiers (see ``CacheTiers.info``)."""

    arguments: List[Any] = []
    response = [(b"info", JSONValue())]


class CacheKeys(amp.Command):
    """Master → worker: up to ``limit`` stored keys starting with ``prefix``."""

    arguments = [(b"prefix", amp.Unicode()), (b"limit", amp.Integer())]
    response = [(b"keys", JSONValue())]


class SearchCache(amp.Command):
    """Master → worker: up to ``limit`` stored keys containing ``text``."""

    arguments = [(b"text", amp.Unicode()), (b"limit", amp.Integer())]
    response = [(b"keys", JSONValue())]


class WarmCache(amp.Command):
    """Master → worker: fetch ``url`` through its route, filling the cache.

    The answer is the origin's status, or none when no route matches.
    """

    arguments = [(b"url", amp.Unicode())]
    response = [(b"status", amp.Integer(optional=True))]
    errors = {CacheRefused: b"CACHE_REFUSED"}
