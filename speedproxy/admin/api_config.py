"""``/api/v1/config``, ``/api/v1/config/reload-ssl`` and the TMDB proxy's ``/config``."""

from __future__ import annotations

from typing import Any, Dict, Mapping

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.server import Request

from speedproxy.admin.changes import config_from_body, masked_mapping
from speedproxy.admin.context import AdminContext, APIResource, as_bool
from speedproxy.admin.json_resource import APIError, bad_request, read_json_object
from speedproxy.config import Config
from speedproxy.tls import TLSConfigError, TLSNotEnabled, TLSReloadIncomplete

#: Keys of the ``{"config": {...}, ...}`` envelope a PUT may use.
ENVELOPE_KEYS = ("config", "persist", "config_version", "source")


def config_view(api: AdminContext) -> Dict[str, Any]:
    control = api.control
    return {
        "config_version": control.config_version,
        "source": api.config_file(),
        "config": masked_mapping(control.config),
    }


def replace_config(api: AdminContext, body: Mapping[str, Any]) -> Deferred:
    """Replace the whole config: ``body`` is the config itself or the ``{"config": ...}`` envelope.

    See :class:`ConfigResource`; fires with the change's answer.
    """
    if isinstance(body.get("config"), dict):
        for key in body:
            if key not in ENVELOPE_KEYS:
                raise bad_request(f"unknown key {key!r} next to 'config' (allowed: {', '.join(ENVELOPE_KEYS)})", key)
        data = body["config"]
        expected = body.get("config_version")
    else:
        data = {key: value for key, value in body.items() if key != "persist"}
        expected = None
    persist = as_bool(body.get("persist", False), "persist")
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
        raise bad_request("config_version must be an integer", "config_version")

    def make(current: Config) -> Config:
        live = api.control.config_version
        if expected is not None and expected != live:
            raise APIError(
                409,
                "conflict",
                f"config version {expected} is no longer live (now {live}); read it again",
                "config_version",
                {"config_version": live},
            )
        return config_from_body(data, current)

    return api.run_change(make, persist=persist)


def reload_ssl(api: AdminContext) -> Deferred:
    """Read the TLS files again everywhere; fires with the answer body (see :class:`ReloadSSLResource`)."""

    def answer(result: Dict[str, Any]) -> Any:
        body = {"config_version": api.control.config_version}
        body.update(result)
        return body

    def failed(failure: Failure) -> Any:
        if failure.check(TLSNotEnabled):
            raise APIError(409, "ssl_disabled", failure.getErrorMessage(), "ssl.enabled")
        if failure.check(TLSConfigError):
            raise APIError(400, "invalid_certificate", failure.getErrorMessage(), failure.value.field)
        if failure.check(TLSReloadIncomplete):
            raise APIError(500, "reload_incomplete", failure.getErrorMessage())
        return failure

    return api.control.reload_ssl().addCallbacks(answer, failed)


class ConfigResource(APIResource):
    """``GET`` the live config (secrets masked) and its version; ``PUT`` a new one.

    A PUT body is either the config itself, laid out like the YAML file
    (optionally with a top-level ``"persist": true``), or the envelope
    ``GET`` returns: ``{"config": {...}, "persist": true, "config_version": N}``.
    With ``config_version`` the change is refused (409) unless that is still
    the live version, so a read-modify-write cannot overwrite a concurrent
    change.  The new config replaces the whole running one, exactly as
    editing the file and sending SIGHUP would, except that an absent or
    masked ``admin.api_key`` keeps the current key.
    """

    isLeaf = False

    def json_GET(self, request: Request) -> Any:
        return config_view(self.api)

    def json_PUT(self, request: Request) -> Any:
        return replace_config(self.api, read_json_object(request))


class ReloadSSLResource(APIResource):
    """``POST``: read the TLS certificate and key files again, without a restart.

    200 once every worker gives new handshakes the files' certificate (open
    connections keep theirs), with the certificate's subject, expiry and
    fingerprint; 409 when ``ssl.enabled`` is false; 400 naming the file when
    the files cannot be used (nothing changed); 500 naming the workers that
    did not take it.
    """

    def json_POST(self, request: Request) -> Any:
        return reload_ssl(self.api)


class TMDBConfigResource(APIResource):
    """The TMDB proxy's ``GET /config``: the live config, secrets masked."""

    def json_GET(self, request: Request) -> Any:
        return config_view(self.api)
