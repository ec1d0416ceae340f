"""Between the gRPC messages and the JSON API's parameters, answers and errors.

Requests become the mapping the JSON API would have read from its body and
query string (only the fields set), answers (JSON bodies) become
``google.protobuf.Struct``, and an :class:`APIError` becomes a gRPC status
code, message and ``x-error-body`` trailer.  ``Struct`` numbers are
doubles, so whole numbers coming in are made integers again (a port, a
weight); JSON itself does not tell ``200`` from ``200.0`` either.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Tuple

from speedproxy.admin.json_resource import APIError, error_body

#: The trailing metadata key carrying the JSON error body.
ERROR_BODY_KEY = "x-error-body"

#: gRPC status code names by the JSON API's HTTP status.
_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "FAILED_PRECONDITION",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def code_name(error: APIError) -> str:
    """The gRPC status code (its name) answering ``error``.

    409 is split the way gRPC's guide does: an id already used is
    ``ALREADY_EXISTS``, a stale ``config_version`` (read-modify-write race)
    ``ABORTED``, any other state conflict ``FAILED_PRECONDITION``.
    """
    if error.status == 409 and error.code == "conflict":
        return "ABORTED" if error.field == "config_version" else "ALREADY_EXISTS"
    if error.status in _CODES:
        return _CODES[error.status]
    return "INVALID_ARGUMENT" if 400 <= error.status < 500 else "INTERNAL"


def error_trailer(error: APIError) -> Tuple[Tuple[str, str], ...]:
    """The trailing metadata of a refused call: the JSON error body."""
    return ((ERROR_BODY_KEY, json.dumps(error_body(error), separators=(",", ":"), default=str)),)


def plain(value: Any) -> Any:
    """``value`` as JSON data (tuples as lists, unknown objects as text)."""
    return json.loads(json.dumps(value, default=str))


def to_struct(body: Mapping[str, Any], struct_class: Any) -> Any:
    """A ``google.protobuf.Struct`` holding ``body`` (a JSON object)."""
    struct = struct_class()
    struct.update(plain(body))
    return struct


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def from_struct(struct: Any) -> Dict[str, Any]:
    """A ``Struct`` as a plain dict, whole numbers as ``int``."""
    from google.protobuf import json_format

    return _integral(json_format.MessageToDict(struct))


def _set(values: Dict[str, Any], name: str, text: str) -> None:
    if text:
        values[name] = text


def replace_config_body(request: Any) -> Dict[str, Any]:
    """The ``PUT /api/v1/config`` envelope of a ``ReplaceConfigRequest``."""
    if not request.HasField("config"):
        raise APIError(400, "bad_request", "config is required", "config")
    body: Dict[str, Any] = {"config": from_struct(request.config), "persist": request.persist}
    if request.HasField("config_version"):
        body["config_version"] = int(request.config_version)
    return body


def backend_values(request: Any, persist: bool = True) -> Dict[str, Any]:
    """``upstream``, ``backend_id`` and ``persist`` of a request, as the JSON API reads them."""
    values: Dict[str, Any] = {}
    _set(values, "upstream", getattr(request, "upstream", ""))
    _set(values, "backend_id", getattr(request, "backend_id", ""))
    if persist and getattr(request, "persist", False):
        values["persist"] = True
    return values


def add_backend_values(request: Any) -> Dict[str, Any]:
    values = backend_values(request)
    values["backend"] = from_struct(request.backend) if request.HasField("backend") else {}
    return values


def update_backend_values(request: Any) -> Dict[str, Any]:
    """SpeedMimi's nested form: ``{"upstream", "backend": {"id"?, <changes>}}`` (+ ``backend_id``)."""
    values = backend_values(request)
    values["backend"] = from_struct(request.backend) if request.HasField("backend") else {}
    return values


def report_values(request: Any) -> Dict[str, Any]:
    """The ``POST /api/v1/report`` body, figures nested in ``performance`` as SpeedMimi sends them."""
    values = backend_values(request, persist=False)
    performance: Dict[str, Any] = {}
    if request.HasField("performance"):
        given = request.performance
        for name in ("cpu_usage", "memory_usage", "load_avg_1", "cpu_count"):
            if given.HasField(name):
                performance[name] = getattr(given, name)
    values["performance"] = performance
    return values


def watch_interval(seconds: float, default: float = 5.0) -> Optional[float]:
    """The interval of a ``WatchStats`` call (``None``: out of range)."""
    if seconds == 0:
        return default
    if not 0.1 <= seconds <= 3600.0:
        return None
    return float(seconds)
