"""The control API's calls as plain operations, for every front end.

The JSON resources (:mod:`speedproxy.admin.site`) and the gRPC service
(:mod:`speedproxy.admin.grpc`) both call an :class:`AdminFacade`: parameters
go in as a plain mapping laid out like the JSON bodies and query strings,
the answer comes out as the JSON body (or a Deferred of it), and a refusal
is an :class:`~speedproxy.admin.json_resource.APIError` with its status,
error code and field.  A change fires only once every worker applied it.

Every method must be called in the reactor thread.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import Deferred, maybeDeferred

from speedproxy.admin import api_backends, api_config, api_stats
from speedproxy.admin.context import AdminContext


class AdminFacade:
    """The SpeedMimi-compatible calls of one admin context (shared with the JSON site)."""

    def __init__(self, api: AdminContext) -> None:
        self.api = api

    def get_config(self) -> Deferred:
        """``GET /api/v1/config``: the live config, secrets masked, and its version."""
        return maybeDeferred(api_config.config_view, self.api)

    def replace_config(self, body: Mapping[str, Any]) -> Deferred:
        """``PUT /api/v1/config``: the whole config, or ``{"config", "persist", "config_version"}``."""
        return maybeDeferred(api_config.replace_config, self.api, body)

    def reload_ssl(self) -> Deferred:
        """``POST /api/v1/config/reload-ssl``."""
        return maybeDeferred(api_config.reload_ssl, self.api)

    def list_backends(self, values: Mapping[str, Any]) -> Deferred:
        """``GET /api/v1/backends?upstream=``."""
        return maybeDeferred(api_backends.list_backends, self.api, values)

    def add_backend(self, values: Mapping[str, Any]) -> Deferred:
        """``POST /api/v1/backends/add``."""
        return maybeDeferred(api_backends.add_backend_call, self.api, values)

    def update_backend(self, values: Mapping[str, Any]) -> Deferred:
        """``PUT /api/v1/backends/update``."""
        return maybeDeferred(api_backends.update_backend_call, self.api, values)

    def remove_backend(self, values: Mapping[str, Any]) -> Deferred:
        """``DELETE /api/v1/backends/remove?upstream=&backend_id=``."""
        return maybeDeferred(api_backends.remove_backend_call, self.api, values)

    def disconnect_backend(self, values: Mapping[str, Any]) -> Deferred:
        """``POST /api/v1/backends/disconnect?upstream=&backend_id=``."""
        return maybeDeferred(api_backends.disconnect_backend_call, self.api, values)

    def server_stats(self) -> Deferred:
        """``GET /api/v1/stats/server``."""
        return maybeDeferred(api_stats.server_stats, self.api)

    def backend_stats(self, values: Mapping[str, Any]) -> Deferred:
        """``GET /api/v1/stats/backend?upstream=&backend_id=``."""
        return maybeDeferred(api_stats.backend_stats, self.api, values)

    def report(self, values: Mapping[str, Any]) -> Deferred:
        """``POST /api/v1/report``."""
        return maybeDeferred(api_stats.report_call, self.api, values)

    def check_key(self, presented: Any) -> Any:
        """``None`` when ``presented`` (the API key sent, bytes or ``None``) may use the API,
        else why not (``missing_key`` / ``wrong_key``)."""
        return self.api.checker.check(self.api.config.admin, presented)
