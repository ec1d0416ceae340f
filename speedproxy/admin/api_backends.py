"""``/api/v1/backends``: list, add, update, remove and disconnect backends.

Add, update and remove are config changes (see
:mod:`speedproxy.admin.changes`): validated like the file and applied to
every worker before the answer, which names the config version now live.
A removed backend gets no new request; requests already in flight to it
finish.  ``disconnect`` is no config change: every worker closes the
backend's pooled and in-flight connections at once.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from speedproxy.admin.changes import (
    UPDATABLE,
    add_backend,
    backend_summary,
    find_backend,
    mask_backend,
    remove_backend,
    require_text,
    update_backend,
)
from speedproxy.admin.context import AdminContext, APIResource, as_bool, params
from speedproxy.admin.json_resource import bad_request
from speedproxy.config import Config, config_to_mapping


def _runtime(reports: Iterable[Mapping[str, Any]], upstream: str, backend_id: str) -> Dict[str, Any]:
    """A backend's state merged over the workers' reports."""
    states = [
        report["backends"][upstream][backend_id]
        for report in reports
        if not report.get("error") and backend_id in report.get("backends", {}).get(upstream, {})
    ]
    if not states:
        return {"workers": 0}
    ewmas = [state["ewma_response_ms"] for state in states if state["ewma_response_ms"]]
    runtime = {
        "workers": len(states),
        "healthy_in_workers": sum(1 for state in states if state["healthy"]),
        "in_flight": sum(state["in_flight"] for state in states),
        "ewma_response_ms": round(sum(ewmas) / len(ewmas), 3) if ewmas else 0.0,
        "reported_load": max(state["reported_load"] for state in states),
    }
    runtime.update(speedproxy_seen(states))
    return runtime


def speedproxy_seen(states: List[Mapping[str, Any]]) -> Dict[str, Any]:
    """Whether a backend is a speedproxy, merged over the workers' views.

    Any worker that saw ``X-Speedproxy`` on its answers makes it one; the
    version is the one seen last, the count is over every worker.
    """
    seen = [state for state in states if state.get("is_speedproxy")]
    latest = max(seen, key=lambda state: state.get("last_checked", 0.0), default=None)
    return {
        "is_speedproxy": latest is not None,
        "version": latest.get("speedproxy_version", "") if latest is not None else None,
        "last_checked": latest.get("last_checked") if latest is not None else None,
        "check_count": sum(state.get("check_count", 0) for state in states),
    }


def backend_rows(
    api: AdminContext,
    config: Config,
    reports: List[Mapping[str, Any]],
    upstream: Optional[str] = None,
    backend_id: Optional[str] = None,
) -> Dict[str, List[Dict[str, Any]]]:
    """``{upstream: [backend, ...]}``: config, health, counters and run-time state."""
    state = api.control.state()
    health: Mapping[Tuple[str, str], bool] = state.get("backend_up", {})
    stats = {
        (row["upstream"], row["id"]): row for row in api.control.stats_snapshot().get("backends", [])
    }
    mapping = config_to_mapping(config)["backends"]
    result: Dict[str, List[Dict[str, Any]]] = {}
    for name, members in mapping.items():
        if upstream is not None and name != upstream:
            continue
        rows = []
        for entry in members:
            if backend_id is not None and entry["id"] != backend_id:
                continue
            row = mask_backend(dict(entry))
            runtime = _runtime(reports, name, entry["id"])
            checked = health.get((name, entry["id"]), True)
            in_workers = runtime.get("healthy_in_workers", runtime["workers"])
            row["healthy"] = bool(checked and (runtime["workers"] == 0 or in_workers > 0))
            row["health_check_up"] = checked
            row["runtime"] = runtime
            counters = stats.get((name, entry["id"]))
            if counters is not None:
                row["stats"] = {
                    key: counters[key]
                    for key in ("active_requests", "requests", "failures", "avg_response_ms")
                    if key in counters
                }
            report = api.reports.get((name, entry["id"]))
            if report is not None:
                row["last_report"] = report
            rows.append(row)
        result[name] = rows
    return result


def list_backends(api: AdminContext, values: Mapping[str, Any]) -> Deferred:
    """The backends of one (``upstream``) or every upstream, with their state."""
    upstream = values.get("upstream") or None
    config = api.config
    if upstream is not None:
        find_backend(config, upstream, None)

    def answer(reports: List[Dict[str, Any]]) -> Dict[str, Any]:
        rows = backend_rows(api, config, reports, upstream)
        body: Dict[str, Any] = {"config_version": api.control.config_version}
        if upstream is not None:
            body["upstream"] = upstream
            body["backends"] = rows.get(upstream, [])
        else:
            body["upstreams"] = rows
        return body

    return api.control.inspect_workers(0, 0).addCallback(answer)


def _persist(values: Mapping[str, Any]) -> bool:
    return as_bool(values.get("persist", False), "persist")


def add_backend_call(api: AdminContext, values: Mapping[str, Any]) -> Deferred:
    """Add a backend: ``{"upstream", "backend": {...}}`` or its keys flat beside ``upstream``."""
    upstream = require_text(values, "upstream")
    persist = _persist(values)
    if "backend" in values:
        entry = values["backend"]
        if not isinstance(entry, dict):
            raise bad_request("backend must be a JSON object", "backend")
        extra = [key for key in values if key not in ("upstream", "backend", "persist")]
        if extra:
            raise bad_request(f"unknown key {extra[0]!r} next to 'backend'", extra[0])
    else:
        entry = {key: value for key, value in values.items() if key not in ("upstream", "persist")}
    backend_id = entry.get("id")

    def answer(body: Dict[str, Any]) -> Dict[str, Any]:
        body["upstream"] = upstream
        body["backend"] = backend_summary(api.config, upstream, backend_id)
        return body

    return api.run_change(lambda current: add_backend(current, upstream, entry), persist).addCallback(answer)


def _update_target(values: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """The backend id and the changes of an update body, in any of its forms.

    SpeedMimi's ``{"upstream", "backend": {"id", <changes>...}}``; the flat
    ``{"upstream", "backend_id" (or "id"), <changes>...}``; or
    ``{"upstream", "backend_id", "changes": {...}}``.
    """
    if "backend" in values:
        nested = values["backend"]
        if not isinstance(nested, dict):
            raise bad_request("backend must be a JSON object", "backend")
        extra = [key for key in values if key not in ("upstream", "backend", "backend_id", "persist")]
        if extra:
            raise bad_request(f"unknown key {extra[0]!r} next to 'backend'", extra[0])
        changes = dict(nested)
        inner = changes.pop("id", None)
        given = values.get("backend_id")
        if inner is not None and given is not None and inner != given:
            raise bad_request(f"backend.id {inner!r} differs from backend_id {given!r}", "backend.id")
        values["backend_id"] = given if given is not None else inner
        if values["backend_id"] is None:
            raise bad_request("backend.id is required", "backend.id")
        return require_text(values, "backend_id"), changes
    if "backend_id" not in values and "id" in values:
        values["backend_id"] = values.pop("id")
    backend_id = require_text(values, "backend_id")
    if isinstance(values.get("changes"), dict):
        return backend_id, dict(values["changes"])
    return backend_id, {k: v for k, v in values.items() if k not in ("upstream", "backend_id", "persist")}


def update_backend_call(api: AdminContext, values: Mapping[str, Any]) -> Deferred:
    """Change some of ``weight``, ``max_conn``, ``active``, ``health_check``, ``name`` of one backend."""
    values = dict(values)
    upstream = require_text(values, "upstream")
    backend_id, changes = _update_target(values)
    persist = _persist(values)
    find_backend(api.config, upstream, backend_id)
    if not changes:
        raise bad_request(f"nothing to update: give one of {', '.join(UPDATABLE)}")

    def answer(body: Dict[str, Any]) -> Dict[str, Any]:
        body["upstream"] = upstream
        body["backend"] = backend_summary(api.config, upstream, backend_id)
        return body

    return api.run_change(
        lambda current: update_backend(current, upstream, backend_id, changes), persist
    ).addCallback(answer)


def remove_backend_call(api: AdminContext, values: Mapping[str, Any]) -> Deferred:
    """Remove one backend: no new requests to it; in-flight ones finish."""
    upstream = require_text(values, "upstream")
    backend_id = require_text(values, "backend_id")
    persist = _persist(values)
    removed: Dict[str, Any] = {}

    def make(current: Config) -> Config:
        removed.update(backend_summary(current, upstream, backend_id))
        return remove_backend(current, upstream, backend_id)

    def answer(body: Dict[str, Any]) -> Dict[str, Any]:
        api.removed.append((upstream, backend_id))
        api.reports.pop((upstream, backend_id), None)
        forget = getattr(api.control, "forget_backend", None)
        if forget is not None:
            forget(upstream, backend_id)
        body["upstream"] = upstream
        body["removed"] = removed
        return body

    return api.run_change(make, persist).addCallback(answer)


def disconnect_backend_call(api: AdminContext, values: Mapping[str, Any]) -> Deferred:
    """Close one backend's pooled and in-flight connections in every worker."""
    upstream = require_text(values, "upstream")
    backend_id = require_text(values, "backend_id")
    if (upstream, backend_id) not in api.removed:
        find_backend(api.config, upstream, backend_id)

    def answer(results: List[Dict[str, Any]]) -> Dict[str, Any]:
        counts = [int(result.get("closed", 0)) for result in results]
        return {
            "config_version": api.control.config_version,
            "upstream": upstream,
            "backend_id": backend_id,
            "closed": sum(counts),
            "closed_per_worker": counts,
            "workers": len(counts),
        }

    return api.control.disconnect_backend(upstream, backend_id).addCallback(answer)


class BackendsResource(APIResource):
    """``GET /api/v1/backends[?upstream=]``: the backends of one or every upstream."""

    isLeaf = False

    def json_GET(self, request: Request) -> Deferred:
        return list_backends(self.api, params(request, body_allowed=False))


class AddBackendResource(APIResource):
    """``POST``: ``{"upstream": "default", "backend": {"id": ..., "host": ..., "port": ...}}``.

    The backend's keys may also sit next to ``upstream`` instead of inside
    ``backend``.  404 for an unknown upstream, 409 for an id already used
    there, 400 naming the wrong field.
    """

    def json_POST(self, request: Request) -> Deferred:
        return add_backend_call(self.api, params(request))


class UpdateBackendResource(APIResource):
    """``PUT``: ``{"upstream", "backend": {"id", <changes>...}}`` (SpeedMimi's form),
    or ``{"upstream", "backend_id", <weight|max_conn|active|health_check|name>...}``."""

    def json_PUT(self, request: Request) -> Deferred:
        return update_backend_call(self.api, params(request))


class RemoveBackendResource(APIResource):
    """``DELETE ?upstream=&backend_id=``: no new requests to it; in-flight ones finish."""

    def json_DELETE(self, request: Request) -> Deferred:
        return remove_backend_call(self.api, params(request))


class DisconnectBackendResource(APIResource):
    """``POST ?upstream=&backend_id=``: close its pooled and in-flight connections now.

    Requests cut this way fail as if the backend had dropped them (retried
    on another backend when that is safe).  Works for a backend removed
    earlier through the API too.
    """

    def json_POST(self, request: Request) -> Deferred:
        return disconnect_backend_call(self.api, params(request))
