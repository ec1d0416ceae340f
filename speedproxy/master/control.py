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
